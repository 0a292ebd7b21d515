"""Measurement: benchmarks, their data and statistics, detection-quality evaluation."""
