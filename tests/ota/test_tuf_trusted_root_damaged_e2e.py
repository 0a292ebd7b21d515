"""A real agent whose persisted image root (rotated to v2) is damaged while it is down:
it starts without a crash, says in status that the root stored on this device is
unreadable and how to fix it (never blaming the server), does not serve the slot it can
no longer re-check, and after the fix named in the message (the repository's root v2
put back) it refreshes on a hint and restores the committed model. Real `edge-ota`
repositories served over HTTP, real mosquitto, real `edge-agent run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fleet import ota_cli, read_status, start_agent, stop_agent, wait_until
from test_tuf_e2e import _channel_config, direct, release, serving, site  # noqa: F401

from tests.mosquitto import Broker

pytestmark = pytest.mark.broker


def _note(state_dir: Path) -> str:
    return str((read_status(state_dir).get("ota") or {}).get("note", ""))


def test_damaged_rotated_root_is_reported_locally_and_fixed_by_restoring_it(
    broker: Broker,
    site: dict[str, Any],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    keys = site["keys"]
    ota_cli("keygen", "--out", str(keys), "--name", "carol")
    k = site["k"]
    ota_cli(
        "repo", "rotate", str(site["image"]), "--old-key", k["alice"], "--old-key", k["bob"],
        "--root-key", k["alice"], "--root-key", str(keys / "carol.key"),
        "--root-threshold", "2", "--targets-key", k["alice"], "--targets-key", k["bob"],
        "--targets-threshold", "2", "--online-key", k["online"],
    )  # fmt: skip  # root v2: bob's key no longer signs roots
    direct(site, release(site, 2))
    cfg = _channel_config(site, tmp_path, "gw-root", broker.port)
    sd = tmp_path / "gw-root"
    meta = sd / "ota" / "tuf" / "image"
    agent = start_agent(cfg)
    try:
        wait_until(lambda: serving(sd) == ("committed", 2), 90, "v2 committed", agent)
        roots = read_status(sd)["ota"]["channel"]["trusted_root_versions"]
        assert roots["image"] == 2
    finally:
        stop_agent(agent)
    stored = meta / "root.json"
    data = stored.read_bytes()
    stored.write_bytes(data[: len(data) // 2])  # through ngclient's link: root v2 damaged
    agent = start_agent(cfg)
    try:
        wait_until(lambda: "TrustStoreError" in _note(sd), 60, "the local error", agent)
        note = _note(sd)
        assert f"the trusted root stored at {stored} is unreadable" in note
        assert "not a refusal by the server" in note
        assert "this device had accepted root v2" in note
        st = read_status(sd)
        errors = json.dumps(st.get("errors", []))
        assert "trusted root stored at" in errors  # the slot could not be re-checked
        assert serving(sd)[1] == 1  # the bundled model serves meanwhile
        # The fix the message names: the repository's root v2 back in the history.
        (meta / "root_history" / "2.root.json").write_bytes(
            (site["image"] / "metadata" / "2.root.json").read_bytes()
        )
        stored.unlink()
        ota_cli("hint", "--host", broker.host, "--port", str(broker.port), "--group", "line-1")
        wait_until(lambda: serving(sd) == ("committed", 2), 90, "v2 restored", agent)
        assert "TrustStoreError" not in _note(sd)
    finally:
        out = stop_agent(agent)
    assert "Traceback" not in out, out
