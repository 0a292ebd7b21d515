"""Inference: model cards, backends behind one interface, and the backend registry."""
