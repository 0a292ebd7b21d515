"""A slot installed from the TUF channel is re-checked at every start against the image
repository's signed target (length and sha256 of the whole bundle, put together again
from the slot's files): a real agent whose slot was changed on disk -- model file, card,
manifest copy and even the stored layout rewritten to agree -- serves the bundled model
instead and says why in status. The director still names that target: the agent
installs it again from the repository (its committed slot was lost), and the fresh slot
passes the same check."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from fleet import read_status, start_agent, stop_agent, wait_until
from test_slot_seal import tamper_slot
from test_tuf_e2e import _channel_config, direct, release, serving, site  # noqa: F401

from edge_agent.updates.updater import PAUSE_ENV
from tests.mosquitto import Broker

pytestmark = pytest.mark.broker


def rewrite_layout(slots: Path, slot: str) -> None:
    """The strongest local attacker: make the stored layout carry the new manifest copy."""
    seal_path = slots / f"{slot}.seal.json"
    seal = json.loads(seal_path.read_text())
    tuf = seal["tuf"]
    skeleton = zlib.decompress((slots / f"{slot}.layout").read_bytes())
    off, length = tuf["manifest"]
    new = (slots / f"{slot}.manifest.json").read_bytes()
    skeleton = skeleton[:off] + new + skeleton[off + length :]
    delta = len(new) - length
    tuf["manifest"] = [off, len(new)]
    tuf["holes"] = [
        [o + delta if o > off else o, p, (slots / slot / p).stat().st_size]
        for o, p, _ in tuf["holes"]
    ]
    (slots / f"{slot}.layout").write_bytes(zlib.compress(skeleton))
    seal_path.write_text(json.dumps(seal))


def errors(state_dir: Path) -> str:
    return json.dumps(read_status(state_dir).get("errors", []))


def test_slot_tampered_on_disk_is_not_served_after_restart_and_status_says_why(
    broker: Broker,
    site: dict[str, Any],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    direct(site, release(site, 2))
    cfg = _channel_config(site, tmp_path, "gw-seal", broker.port)
    sd = tmp_path / "gw-seal"
    agent = start_agent(cfg)
    try:
        wait_until(lambda: serving(sd) == ("committed", 2), 90, "v2 committed", agent)
    finally:
        stop_agent(agent)
    slots = sd / "slots"
    slot = json.loads((sd / "slots.json").read_text())["active"]
    bad = tamper_slot(slots / slot, slots / f"{slot}.manifest.json", tmp_path / "other")
    rewrite_layout(slots, slot)
    # Held right after it downloaded v2 again (before any slot is claimed), so what the
    # start-up check did can be seen before the restore replaces it.
    agent = start_agent(cfg, {PAUSE_ENV: "download"})
    try:
        wait_until((sd / "ota" / "paused-at-download").exists, 60, "v2 downloaded again", agent)
        wait_until(lambda: serving(sd)[1] == 1 and "signed target" in errors(sd), 60,
                   "bundled model serving, with the reason", agent)  # fmt: skip
        st = read_status(sd)
        assert st["ota"]["model_source"] == {st["streams"][0]["name"]: "bundled"}
        assert f"slot {slot}: files do not match the signed target" in errors(sd)
        assert hashlib.sha256(bad).hexdigest() not in json.dumps(st)
    finally:
        out = stop_agent(agent)
    assert "Traceback" not in out, out
    assert not (slots / slot).exists()  # the tampered files were never loaded, and are gone
    agent = start_agent(cfg)  # the director still names v2: its lost slot is restored
    try:
        wait_until(lambda: serving(sd) == ("committed", 2), 90, "v2 restored", agent)
        assert read_status(sd)["ota"]["model_source"] == {"vib": f"slot {slot}"}
    finally:
        out = stop_agent(agent)
    assert "Traceback" not in out, out
    assert hashlib.sha256((slots / slot / "model.onnx").read_bytes()).hexdigest() != (
        hashlib.sha256(bad).hexdigest()
    )
