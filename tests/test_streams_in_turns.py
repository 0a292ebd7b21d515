"""Streams run in turns on the supervisor's workers (ADR 0008), as users run the agent:
the process's threads do not grow with max-speed streams, a run bounded by a number of
windows stops there with many max-speed streams, and a stream retried after its
restart budget gets a fresh source budget. Real agent processes and real sources."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.profiles import Profile
from edge_agent.service.faults import Faults
from edge_agent.service.supervisor import Loop
from edge_agent.streams import StreamRuntime, StreamSinks
from tests.agentutil import run_cli


def _config(tmp: Path, streams: int) -> Path:
    cfg = tmp / "agent.toml"
    lines = ['device_id = "gw-turns"', "[mqtt]", "enabled = false"]
    for i in range(streams):
        lines += [
            "[[streams]]",
            f'name = "s{i}"',
            'variant = "int8-onnx"',
            'source = { kind = "synthetic", speed = 0.0, anomalies = false }',
        ]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_many_max_speed_streams_stop_at_the_window_limit(tmp_path: Path) -> None:
    """Max-speed turns run one at a time, each bounded by the windows still wanted: 16
    streams do not overshoot --max-windows by the turns running beside each other."""
    cfg = _config(tmp_path, 16)
    r = run_cli(
        "run", "--config", str(cfg), "--state-dir", str(tmp_path / "state"),
        "--max-windows", "100", "--duration", "120", timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"stopped: (\d+) windows scored \(--max-windows 100\)", r.stdout + r.stderr)
    assert m is not None, (r.stdout + r.stderr)[-3000:]
    # a block's windows come together: at most one hop's worth past the limit
    assert 100 <= int(m.group(1)) <= 110


def test_a_revived_stream_gets_a_fresh_source_budget(tmp_path: Path) -> None:
    """The supervisor tries a stream that gave up again with a fresh budget; its source
    must get one too, or a source that spent its budget fails at its first error."""
    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "health": {"restart_budget": 1, "restart_window_s": 600},
            "streams": [
                {
                    "name": "a",
                    "model": "vibration-ae",
                    "source": {"kind": "synthetic", "rate_hz": 100.0, "block": 16},
                }
            ],
        }
    )
    rt = StreamRuntime(cfg.streams[0], cfg, Profile(name="t"), None)
    spent = rt.runner.budget
    assert spent.allow(time.monotonic())
    assert not spent.allow(time.monotonic()), "one restart in the window, then no more"
    rt.give_up("test")
    rt.revive()
    try:
        assert rt.runner.budget is not spent
        assert rt.runner.budget.allow(time.monotonic()), "the revived source may restart"
    finally:
        rt.stop_source(2.0)


def test_a_stream_on_its_own_thread_scores_through_the_same_turns(tmp_path: Path) -> None:
    """`serve` (tests and tools) runs `step` in a loop, waiting for its source between
    turns: it scores and returns when stopped."""
    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "streams": [
                {
                    "name": "a",
                    "model": "vibration-ae",
                    "source": {"kind": "synthetic", "rate_hz": 100.0, "block": 16},
                }
            ],
        }
    )
    rt = StreamRuntime(cfg.streams[0], cfg, Profile(name="t"), None)
    stop = threading.Event()
    sinks = StreamSinks(lambda _e: None, lambda _h: None, lambda: None)
    t = threading.Thread(target=rt.serve, args=(Loop("stream-a", stop, Faults({}, {})), sinks))
    t.start()
    try:
        deadline = time.monotonic() + 60
        while rt.pipeline.stats.windows < 5:
            assert time.monotonic() < deadline, "the stream scored"
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(10)
        rt.stop_source(2.0)
    assert not t.is_alive()
