"""`edge-agent rollback` against a running agent: the agent (owner of the slot state)
rolls back itself and its stream switches model without a restart or a lost window;
its later writes keep the rollback (a CLI writing slots.json beside it would be undone).
Real signed bundles, real slots, the real agent process and CLI; no broker needed."""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fleet import (
    PROFILE,
    install_committed,
    make_fleet,
    ota_cli,
    read_status,
    start_agent,
    stop_agent,
    wait_until,
    write_config,
)
from otamodels import copy_model

from edge_agent.updates.manual_rollback import REQUEST_FILE
from edge_agent.updates.store import SlotStore
from edge_agent.updates.updater import load_root
from tests.agentutil import run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _install(store: SlotStore, bundle: Path, root_file: Path) -> None:
    now = datetime.now(timezone.utc)
    install_committed(store, bundle, load_root(root_file, now), PROFILE, now)


def _ota_states_spooled(state_dir: Path) -> list[str]:
    import json
    import sqlite3

    with sqlite3.connect(f"file:{state_dir / 'outbox.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT topic, payload FROM records").fetchall()
    return [json.loads(p)["state"] for t, p in rows if t.endswith("/ota/state")]


def _served(state_dir: Path) -> tuple[Any, int]:
    (s,) = read_status(state_dir).get("streams") or [{}]
    return (s.get("model") or {}).get("version"), int(s.get("windows") or 0)


@pytest.fixture
def device(tmp_path: Path) -> tuple[Path, Path]:
    """A device whose slots hold v2 (previous) and v3 (active), both committed."""
    fleet = make_fleet(tmp_path / "fleet", 2)
    keys = tmp_path / "fleet" / "keys"
    v3 = tmp_path / "fleet" / "vib-v3.bundle"
    ota_cli(
        "build", str(copy_model(tmp_path / "fleet" / "model-v3", 3)), "--profiles", PROFILE,
        "--expires", "30d", "--out", str(v3),
    )  # fmt: skip
    ota_cli("sign", str(v3), "--key", str(keys / "alice.key"), "--key", str(keys / "bob.key"))
    cfg = write_config(tmp_path, "gw-rb", _free_port(), fleet.root)
    store = SlotStore(tmp_path / "gw-rb")
    _install(store, fleet.bundle, fleet.root)
    _install(store, v3, fleet.root)
    return cfg, tmp_path / "gw-rb"


@pytest.mark.parametrize("with_updater", [True, False], ids=["updater", "no-root-file"])
def test_rollback_applies_live_and_the_agent_keeps_it(
    device: tuple[Path, Path], with_updater: bool
) -> None:
    cfg, sd = device
    if not with_updater:  # OTA slots serve, but no trusted root: no updater thread
        cfg.write_text(
            "\n".join(ln for ln in cfg.read_text().splitlines() if "root_file" not in ln)
        )
    agent = start_agent(cfg)
    try:
        wait_until(lambda: _served(sd) == (3, _served(sd)[1]) and _served(sd)[1] > 0, 30,
                   "v3 serving", agent)  # fmt: skip
        p = run_cli("rollback", "--state-dir", str(sd), "--reason", "bad batch on line 1")
        assert p.returncode == 0, p.stderr
        assert "rolled back from v3" in p.stdout
        assert "applied by the running agent" in p.stdout
        # the stream serves v2 now, without a restart, and keeps scoring
        windows = _served(sd)[1]
        wait_until(lambda: _served(sd)[0] == 2, 5, "v2 serving", agent)
        wait_until(lambda: _served(sd)[1] > windows + 20, 10, "windows after the swap", agent)
        assert not (sd / REQUEST_FILE).exists()
        st = read_status(sd)
        assert st["streams"][0]["error"] in ("", None)
        if with_updater:
            assert st["ota"]["state"] == "rolled_back"  # reported like any OTA state
        # published either way (no broker here: it waits in the outbox)
        wait_until(lambda: "rolled_back" in _ota_states_spooled(sd), 5, "ota/state spooled")
        # the agent wrote the rollback itself: its store and the disk agree
        assert SlotStore(sd).state.active_version == 2
        # and again: back to v3 (a toggle), still live
        p = run_cli("rollback", "--state-dir", str(sd), "--json")
        assert p.returncode == 0, p.stderr
        wait_until(lambda: _served(sd)[0] == 3, 5, "v3 serving again", agent)
    finally:
        out = stop_agent(agent)
    assert "Traceback" not in out, out
    assert SlotStore(sd).state.active_version == 3
    # a restart serves what the slots say
    agent = start_agent(cfg)
    try:
        wait_until(lambda: _served(sd)[0] == 3 and _served(sd)[1] > 0, 30, "v3 after restart",
                   agent)  # fmt: skip
    finally:
        stop_agent(agent)


def test_rollback_with_no_active_slot_is_refused_by_the_running_agent(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet", 2)
    cfg = write_config(tmp_path, "gw-empty", _free_port(), fleet.root)
    sd = tmp_path / "gw-empty"
    agent = start_agent(cfg)
    try:
        wait_until(lambda: _served(sd)[1] > 0, 30, "bundled model serving", agent)
        p = run_cli("rollback", "--state-dir", str(sd))
        assert p.returncode == 1
        assert "no OTA model is active" in p.stderr
        assert "Traceback" not in p.stderr
        assert _served(sd)[0] == 1  # the bundled model still serves
    finally:
        stop_agent(agent)


def test_malformed_or_stale_requests_are_not_carried_out(tmp_path: Path) -> None:
    from edge_agent.errors import StateError
    from edge_agent.profiles import Profile
    from edge_agent.updates.boot import SlotBoot
    from edge_agent.updates.manual_rollback import STALE_AFTER_S, Request, perform, submit, take

    (tmp_path / "ota").mkdir()
    (tmp_path / REQUEST_FILE).write_text("{not json")
    assert take(tmp_path) is None
    assert not (tmp_path / REQUEST_FILE).exists()  # dropped, not retried every tick
    (tmp_path / REQUEST_FILE).write_text('{"id": "x"}')
    assert take(tmp_path) is None
    req = submit(tmp_path, "why", 1000.0)
    assert take(tmp_path) == req
    assert take(tmp_path) is None
    old = Request("y", "late", datetime.now(timezone.utc).timestamp() - STALE_AFTER_S - 1)
    with pytest.raises(StateError, match="ask again"):
        perform(
            SlotBoot(SlotStore(tmp_path)), [], Profile(name="t"), old, datetime.now(timezone.utc)
        )


def test_a_state_dir_the_cli_cannot_write_gives_a_clear_error(tmp_path: Path) -> None:
    import json
    import os
    import time

    sd = tmp_path / "state"
    sd.mkdir()
    # an agent that looks alive (this test's own pid), and an `ota` the CLI cannot write into
    (sd / "status.json").write_text(
        json.dumps({"v": 1, "running": True, "pid": os.getpid(), "written_at": time.time()})
    )
    (sd / "ota").write_text("not a directory")
    p = run_cli("rollback", "--state-dir", str(sd))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "run as the agent's user or with sudo" in p.stderr
    assert "Traceback" not in p.stderr
