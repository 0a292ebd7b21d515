"""Fleet test rig: real `edge-agent run` processes on 1 Hz synthetic streams, and the real
`edge-ota fleet` CLI, against real mosquitto brokers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agentutil import REPO
from tests.mosquitto import Broker


def agent_config(
    path: Path,
    broker: Broker,
    device: str,
    *,
    group: str = "default",
    rate_hz: float = 1.0,
    username: str = "",
    password_file: Path | None = None,
    protocol: str = "5",
    telemetry_s: float = 60.0,
    source_extra: str = "",
    profile: str = "",
    ota_extra: tuple[str, ...] = (),
    stream_extra: tuple[str, ...] = (),
) -> Path:
    """One agent's config file; `profile`, `ota_extra` and `stream_extra` add lines
    (a device profile, `[ota]` keys, `[[streams]]` keys) for tests that need them."""
    lines = [
        f'device_id = "{device}"',
        f'state_dir = "{path.parent / ("state-" + device)}"',
        *([f'profile = "{profile}"'] if profile else []),
        "[mqtt]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        f'protocol = "{protocol}"',
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 2.0",
        f"telemetry_interval_s = {telemetry_s}",
    ]
    if username:
        lines.append(f'username = "{username}"')
    if password_file is not None:
        lines.append(f'password_file = "{password_file}"')
    lines += [
        "[ota]",
        f'group = "{group}"',
        *ota_extra,
        "[health]",
        "stall_after_s = 120.0",
        "watchdog = false",
        "[[streams]]",
        'name = "line"',
        'model = "vibration-ae"',
        *stream_extra,
        f'source = {{kind = "synthetic", rate_hz = {rate_hz}, block = 1{source_extra}}}',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProc:
    """One real agent process; stopped with SIGTERM (a clean stop) by `stop()`."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self._log = log.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def ota_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ota", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def fleet_status(broker: Broker, *extra: str) -> dict[str, Any]:
    p = ota_cli("fleet", "status", "--json", "--host", broker.host, "--port", str(broker.port),
                *extra)  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def fleet_cmd(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return ota_cli("fleet", "cmd", "--host", broker.host, "--port", str(broker.port), *args)


def wait_until(pred: Callable[[], bool], timeout: float = 60.0, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def devices_seen(doc: dict[str, Any], verdict: str | None = None) -> set[str]:
    return {
        d["device"]
        for d in doc["devices"]
        if not d["offline"] and (verdict is None or d["verdict"] == verdict)
    }


def bridge_lines(site: Broker, protocol: str = "mqttv311") -> tuple[str, ...]:
    """mosquitto.conf lines for a broker bridged to `site` (both ways, `edge/#`)."""
    return (
        "connection site-1",
        f"address {site.host}:{site.port}",
        "topic edge/# both 1",
        f"bridge_protocol_version {protocol}",
        # the private-bridge flag is mosquitto's 3.1.1 extension: only with that protocol
        f"try_private {'true' if protocol == 'mqttv311' else 'false'}",
        "cleansession true",
        "restart_timeout 1",
        # the test broker's "unlimited" (0) would go out as an MQTT 5 Receive Maximum
        # of 0 in the bridge's CONNECT, which the site broker refuses as a protocol error
        "max_inflight_messages 20",
    )


def cpu_rss(pid: int) -> tuple[float, int]:
    """A process's CPU seconds (user + system) and resident bytes, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
