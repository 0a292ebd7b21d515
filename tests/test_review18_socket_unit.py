"""Review of issue 18: the unix socket that docs/serving.md tells users to configure
(`socket = "/run/edge-agent/infer.sock"`) must be one the shipped service can create.

packaging/edge-agent.service runs with ProtectSystem=strict (all of /run read-only
inside the sandbox) and PrivateTmp=yes, and has no RuntimeDirectory=: /run/edge-agent
neither exists nor could be written. Following the doc, the agent stops at start with
"[serving] cannot listen on /run/edge-agent/infer.sock: No such file or directory"
(exit 1, and Restart=on-failure restarts it every 5 s). The directory the doc names
has to be the unit's RuntimeDirectory (or in its ReadWritePaths)."""

from __future__ import annotations

import re

from tests.agentutil import REPO

DOC = REPO / "docs" / "serving.md"
UNIT = REPO / "packaging" / "edge-agent.service"


def _unit_values(key: str) -> list[str]:
    out: list[str] = []
    for line in UNIT.read_text().splitlines():
        k, eq, v = line.partition("=")
        if eq and k.strip() == key:
            out += v.split()
    return out


def test_the_documented_socket_directory_is_writable_by_the_service() -> None:
    sockets = re.findall(r'^socket = "([^"]+)"', DOC.read_text(), flags=re.M)
    assert sockets, "docs/serving.md shows no socket example"
    assert "strict" in _unit_values("ProtectSystem")  # what makes /run read-only
    runtime = ["/run/" + d for d in _unit_values("RuntimeDirectory")]
    writable = runtime + _unit_values("ReadWritePaths")
    for path in sockets:
        parent = path.rsplit("/", 1)[0]
        assert any(parent == w or parent.startswith(w + "/") for w in writable), (
            f"docs/serving.md's socket {path}: its directory {parent} is neither the "
            f"service's RuntimeDirectory nor in ReadWritePaths ({writable}); under "
            "ProtectSystem=strict the agent cannot create it and stops at start"
        )
