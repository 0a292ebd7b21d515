"""Sensor inputs. Each kind registers in `registry.py`; all share `base.Source`."""
