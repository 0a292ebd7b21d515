"""Device side of model updates: fetch and verify, slot store and state machine, shadow,
boot-time slot choice, manual rollback."""
