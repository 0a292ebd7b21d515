"""A JSON message's own time `t`: epoch seconds, or milliseconds / microseconds /
nanoseconds told apart by size (a PLC bridge stamping in ms was read as the year
57000, and every message became a hole); a non-finite `t` is counted, not used."""

from __future__ import annotations

import json

import pytest

from edge_agent.sources.mqtt_payload import decode_json

CH = ("a", "b")


@pytest.mark.parametrize(
    "t", [1_718_000_000.25, 1_718_000_000_250, 1_718_000_000_250_000, 1_718_000_000_250_000_000]
)
def test_message_time_in_any_epoch_unit_is_seconds(t: float) -> None:
    d = decode_json(json.dumps({"t": t, "values": [1.0, 2.0]}).encode(), CH)
    assert d.t == pytest.approx(1_718_000_000.25, abs=1e-6)
    assert not d.errors


@pytest.mark.parametrize("t", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_message_time_is_counted_and_not_used(t: str) -> None:
    d = decode_json(f'{{"t": {t}, "values": [1.0, 2.0]}}'.encode(), CH)
    assert d.t is None
    assert d.errors["bad_times"] == 1
    assert d.samples.tolist() == [[1.0, 2.0]]
