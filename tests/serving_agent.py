"""A real `edge-agent run` process with the inference endpoint on, for serving tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.agentutil import MODELS, REPO

TOKEN = "serving-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    url: str
    port: int
    state: Path
    log: Path
    proc: subprocess.Popen[bytes]

    socket_path: Path | None = None

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        if self.socket_path is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        return _UnixConnection(str(self.socket_path), timeout)

    def request(
        self,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, headers) of GET path (POST when a body is given)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn = self.connection(timeout)
        try:
            conn.request("POST" if data is not None else "GET", path, data, headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read()), dict(r.headers)
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        return data


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path_ = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path_)
        except OSError:
            s.close()
            raise
        self.sock = s


@contextmanager
def serving_agent(
    tmp: Path,
    serving: str = "",
    *,
    demo: bool = True,
    env: dict[str, str] | None = None,
    socket_path: Path | None = None,
) -> Iterator[Served]:
    """Start the agent (demo stream in real time unless demo=False) with `[serving]` on
    TCP and a token, plus the extra `serving` lines; wait until it answers ready."""
    port = free_port()
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f"""
device_id = "gw-serving"
models_dir = "{MODELS}"

[mqtt]
enabled = false

[logging]
format = "plain"

[serving]
enabled = true
port = {port}
token_file = "{token_file}"
{serving}
"""
    )
    state = tmp / "state"
    log = tmp / "agent.log"
    args = [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)]
    args += ["--state-dir", str(state)] + (["--demo"] if demo else [])
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    full_env.update(env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    served = Served(f"http://127.0.0.1:{port}", port, state, log, proc, socket_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if served.request("/v2/health/ready", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "endpoint never ready:\n" + log.read_text()
            time.sleep(0.2)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
