"""The fleet view (pure): rows from retained messages, offline detection, group, totals."""

from __future__ import annotations

import json
from typing import Any

from ota.fleet import build_view, render_table, split_topic


def _msg(device: str, kind: str, ts: float, **body: Any) -> tuple[str, bytes]:
    topic = f"edge/{device}/status" if kind == "status" else f"edge/{device}/state/{kind}"
    payload = {"v": 1, "device": device, "seq": 1, "ts": ts, **body}
    return topic, json.dumps(payload).encode()


def _device(device: str, ts: float, group: str = "g1", version: int = 3) -> list[Any]:
    return [
        _msg(device, "status", ts - 100, state="online"),
        _msg(device, "health", ts, group=group, verdict="OK", reasons=[]),
        _msg(
            device,
            "models",
            ts - 50,
            streams=[{"stream": "s", "family": "vib", "model": "m", "version": version}],
        ),
        _msg(device, "ota", ts - 50, phase="idle", target=None, last=None),
        _msg(device, "alarms", ts - 50, streams=[{"stream": "s", "open": False}]),
    ]


def test_topics_outside_the_device_layout_are_ignored() -> None:
    assert split_topic("edge", "edge/gw-1/state/ota") == ("gw-1", "ota")
    assert split_topic("plant/edge", "plant/edge/gw-1/status") == ("gw-1", "status")
    assert split_topic("edge", "edge/gw-1/state/other") is None
    assert split_topic("edge", "edge/gw-1/events") is None
    assert split_topic("edge", "other/gw-1/status") is None


def test_one_row_per_device_with_last_seen_health_versions_and_ota() -> None:
    now = 10_000.0
    msgs = [*_device("gw-2", now - 10, version=4), *_device("gw-1", now - 5)]
    msgs.append(
        _msg(
            "gw-1",
            "ota",
            now - 5,
            phase="idle",
            target=None,
            last={"outcome": "rejected", "version": 5, "reason": "profile excluded"},
        )
    )
    v = build_view("edge", msgs, now, offline_after_s=900)
    assert [r.device for r in v.rows] == ["gw-1", "gw-2"]
    gw1 = v.rows[0]
    assert gw1.last_seen == now - 5
    assert gw1.versions == {"vib": "v3"}
    assert gw1.last_error == "rejected v5: profile excluded"
    assert not gw1.offline
    t = v.totals()
    assert t["online"] == 2
    assert t["versions"] == {"vib v3": 1, "vib v4": 1}
    text = render_table(v)
    assert "gw-1" in text
    assert "vib=v4" in text
    assert "2 devices: 2 online" in text


def test_offline_by_last_will_or_by_silence_longer_than_offline_after() -> None:
    now = 10_000.0
    msgs = [
        *_device("quiet", now - 1000),  # heartbeat stopped
        *_device("dead", now - 5),
        _msg("dead", "status", now - 1, state="offline", clean=False),
        *_device("fine", now - 5),
    ]
    v = build_view("edge", msgs, now, offline_after_s=900)
    assert {r.device: r.offline for r in v.rows} == {"dead": True, "fine": False, "quiet": True}
    assert v.totals()["offline"] == 2
    v2 = build_view("edge", msgs, now, offline_after_s=2000)
    assert {r.device: r.offline for r in v2.rows}["quiet"] is False


def test_group_filter_and_garbage_payloads() -> None:
    now = 100.0
    msgs = [
        *_device("a", now, group="line-1"),
        *_device("b", now, group="line-2"),
        ("edge/c/state/health", b"not json"),
        ("edge/d/state/health", b""),  # a cleared retained message
        ("edge/e/status", b"[1, 2]"),
    ]
    v = build_view("edge", msgs, now, offline_after_s=900, group="line-2")
    assert [r.device for r in v.rows] == ["b"]
    assert [r.device for r in build_view("edge", msgs, now, 900).rows] == ["a", "b"]
