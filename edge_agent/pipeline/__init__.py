"""Windows, features, scoring, alarms, and sensor health: pure logic on sample blocks."""
