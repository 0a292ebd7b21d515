"""Pure stream processing: windows, alarm policy, per-stream scoring loop."""
