"""sd_notify over a real unix datagram socket, and the pure health decisions."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.service.health import (
    Notifier,
    ProgressWatchdog,
    Readiness,
    ReadinessGate,
    watchdog_interval,
)
from tests.notify_socket import NotifySocket


@pytest.fixture
def notify_sock(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_messages_arrive_as_key_value_datagrams(notify_sock: NotifySocket) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": notify_sock.address})
    assert n.enabled
    assert n.via == "socket"
    assert n.ready("2 streams, model v3")
    assert n.status("running\nwith a newline   and   spaces")
    assert n.watchdog()
    assert n.extend_timeout(1.5)
    assert n.stopping("shutting down")
    msgs = notify_sock.drain(timeout=1.0)
    while len(msgs) < 5:
        more = notify_sock.drain(timeout=1.0)
        assert more, msgs
        msgs += more
    assert msgs[0] == {"READY": "1", "STATUS": "2 streams, model v3"}
    assert msgs[1] == {"STATUS": "running with a newline and spaces"}
    assert msgs[2] == {"WATCHDOG": "1"}
    assert msgs[3] == {"EXTEND_TIMEOUT_USEC": "1500000"}
    assert msgs[4] == {"STOPPING": "1", "STATUS": "shutting down"}
    n.close()


def test_ready_is_sent_once_then_only_status(notify_sock: NotifySocket) -> None:
    n = Notifier(notify_sock.address)
    n.ready()
    n.ready("again")
    msgs = notify_sock.drain(timeout=1.0)
    msgs += notify_sock.drain(timeout=0.2)
    assert msgs == [{"READY": "1"}, {"STATUS": "again"}]
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"@edge-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    s = NotifySocket(name)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": name})
        assert n.watchdog()
        assert s.drain(timeout=1.0) == [{"WATCHDOG": "1"}]
        n.close()
    finally:
        s.close()


def test_no_socket_is_a_quiet_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.via == "none"
    assert n.ready() is False
    assert n.watchdog() is False


def test_vanished_socket_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    assert n.watchdog() is False
    assert n.watchdog() is False
    assert sum("sd_notify" in r.message for r in caplog.records) == 1  # warned once
    n.close()


def test_status_text_is_one_bounded_line(notify_sock: NotifySocket) -> None:
    n = Notifier(notify_sock.address)
    n.status("x" * 1000)
    (msg,) = notify_sock.drain(timeout=1.0)
    assert len(msg["STATUS"]) == 200
    assert msg["STATUS"].endswith("...")
    with pytest.raises(ValueError, match="KEY=value"):
        n.notify("READY=1\nWATCHDOG=1")
    n.close()


def test_start_timeout_is_extended_only_by_steps_of_real_loading(
    notify_sock: NotifySocket,
) -> None:
    """One grant on entry and one per step; nothing from a background thread, so a
    load that hangs stops asking and systemd's start timeout can fire."""
    n = Notifier(notify_sock.address)
    with n.extending(0.1) as ext:
        ext.step()
        ext.step()
        time.sleep(0.35)  # a hung load: no step, no grant
    msgs = notify_sock.drain(timeout=1.0) + notify_sock.drain(timeout=0.1)
    assert ext.sent == 3
    assert msgs == [{"EXTEND_TIMEOUT_USEC": "100000"}] * 3
    n.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=7) is None


def test_watchdog_pings_while_samples_and_windows_progress() -> None:
    wd = ProgressWatchdog(10.0)
    assert wd.should_ping(0, 0, now=100.0)  # baseline
    for t in range(1, 30):
        assert wd.should_ping(t * 100, t * 5, now=100.0 + t)


def test_watchdog_stops_when_the_source_stalls() -> None:
    wd = ProgressWatchdog(10.0)
    assert wd.should_ping(100, 5, now=0.0)
    assert wd.should_ping(100, 5, now=10.0)  # exactly at the limit: still fine
    check = wd.check(100, 5, now=10.5)
    assert not check.ok
    assert check.reason == "no samples for 10 s"
    assert wd.should_ping(200, 6, now=11.0)  # data back: pings resume


def test_watchdog_stops_when_inference_hangs_while_samples_flow() -> None:
    wd = ProgressWatchdog(10.0, samples_per_window=64)
    assert wd.should_ping(0, 0, now=0.0)
    assert wd.should_ping(1000, 10, now=1.0)
    for t in range(2, 12):  # samples keep coming, windows stuck at 10
        wd.check(1000 + t * 100, 10, now=float(t))
    check = wd.check(3000, 10, now=11.5)
    assert not check.ok
    assert "no window scored for 10 s while 2000 samples arrived" in check.reason


def test_slow_sensor_filling_a_window_is_not_a_hang() -> None:
    # 1 sample/s, 256-sample hop: minutes between windows is normal.
    wd = ProgressWatchdog(10.0, samples_per_window=256)
    assert wd.should_ping(0, 0, now=0.0)
    for t in range(1, 200):
        assert wd.should_ping(t, 0, now=float(t)), t


def test_finished_sources_keep_liveness_pings() -> None:
    wd = ProgressWatchdog(5.0)
    assert wd.should_ping(10, 1, now=0.0)
    assert not wd.should_ping(10, 1, now=60.0)
    assert wd.should_ping(10, 1, now=61.0, expecting_data=False)


def test_watchdog_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="stall_after_s"):
        ProgressWatchdog(0)
    with pytest.raises(ValueError, match="samples_per_window"):
        ProgressWatchdog(1.0, samples_per_window=0)


def test_readiness_needs_every_condition() -> None:
    gate = ReadinessGate()
    assert not gate.ready
    assert gate.describe() == ("starting: waiting for config validation, model warm-up, outbox")
    gate.mark(Readiness.CONFIG_VALIDATED)
    gate.mark(Readiness.OUTBOX_OPEN)
    assert not gate.ready
    assert gate.missing == (Readiness.MODELS_WARMED,)
    gate.mark(Readiness.MODELS_WARMED)
    assert gate.ready
    assert gate.describe() == "ready"
