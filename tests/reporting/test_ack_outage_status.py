"""A broker that accepts connections but acknowledges nothing: each ack timeout makes the
link reconnect, and the new connection looked healthy ("connected for 12 s", status OK)
while nothing had been delivered for minutes. `mqtt.unacked_since` keeps the start of
the outage across those reconnects, and status says DEGRADED with it."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.reporting import Reporter
from edge_agent.service.status import Snapshot, Verdict, assess
from tests.reporting.helpers import wait_until
from tests.reporting.test_link_faults import SilentBroker, _cfg
from tests.test_status import state


def test_no_puback_outage_is_dated_from_its_start_across_reconnects(tmp_path: Path) -> None:
    fake = SilentBroker()
    r = Reporter(parse_config(_cfg(fake.port, ack_timeout_s=1.0)), tmp_path, birth=dict)
    r.start()
    try:
        assert wait_until(lambda: r.snapshot()["mqtt"]["connected"], timeout=30)
        t_sent = time.time()
        r.publish_event({"event": "start", "stream": "s1"})
        assert wait_until(lambda: r.snapshot()["mqtt"]["ack_timeouts"] >= 1, timeout=60)
        first = r.snapshot()["mqtt"]["unacked_since"]
        assert first is not None
        assert first <= time.time() - 1.0  # the oldest unacknowledged send, not the timeout
        assert first >= t_sent - 5.0  # (the birth may have gone out just before)
        # more timeouts and reconnects: the outage keeps its start
        assert wait_until(lambda: r.snapshot()["mqtt"]["ack_timeouts"] >= 3, timeout=60)
        assert wait_until(lambda: r.snapshot()["mqtt"]["connected"], timeout=30)
        mqtt = r.snapshot()["mqtt"]
        assert mqtt["unacked_since"] == first, mqtt
        now = time.time()
        st = state(now, mqtt=mqtt)
        a = assess(Snapshot("/var/lib/edge-agent", True, st, pid_alive=True), now)
        assert a.verdict is Verdict.DEGRADED, a
        assert any("has acknowledged nothing since" in x for x in a.reasons), a.reasons
    finally:
        r.stop(timeout=1.0)
        fake.close()


def test_status_is_quiet_without_an_ack_outage() -> None:
    now = time.time()
    mqtt = {"enabled": True, "connected": True, "broker": "b:1883", "since": now - 60}
    st = state(now, mqtt={**mqtt, "unacked_since": None, "ack_timeouts": 2})
    a = assess(Snapshot("/var/lib/edge-agent", True, st, pid_alive=True), now)
    assert not any("acknowledged" in x for x in a.reasons), a.reasons
