"""`edge-agent models` / `edge-agent rollback` on a real state dir, and start-up choosing
the slot's model or falling back when the slot's model does not load."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from conftest import NOW, PROFILE, Env
from fleet import install_committed
from otamodels import FP32, copy_model

from edge_agent.profiles import Profile
from edge_agent.updates.boot import SlotBoot
from edge_agent.updates.slots import Phase
from edge_agent.updates.store import SlotStore
from ota.build import plan_bundle
from ota.bundle import add_signatures, read_header, write_bundle
from ota.signing import sign_bytes
from tests.agentutil import run_cli


def real_bundle(env: Env, model_dir: Path, name: str) -> Path:
    plan = plan_bundle(
        model_dir, profiles=[PROFILE], created=NOW - timedelta(hours=1),
        expires=NOW + timedelta(days=30), min_agent_version="0.1.0",
    )  # fmt: skip
    out = env.tmp / name
    write_bundle(out, plan.manifest, plan.sources)
    add_signatures(out, [sign_bytes(k, read_header(out).manifest_bytes) for k in env.keys[:2]])
    return out


def install(env: Env, store: SlotStore, bundle: Path) -> None:
    install_committed(store, bundle, env.root, PROFILE, NOW)


def test_models_lists_slots_versions_signers_and_commit_state(env: Env) -> None:
    store = SlotStore(env.tmp / "state")
    install(env, store, real_bundle(env, copy_model(env.tmp / "v2", 2), "2.b"))
    install(env, store, real_bundle(env, copy_model(env.tmp / "v3", 3), "3.b"))
    p = run_cli("models", "--state-dir", str(env.tmp / "state"), "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    a, b = rep["slots"]
    assert (a["role"], a["version"], b["role"], b["version"]) == ("previous", 2, "active", 3)
    assert sorted(b["signers"]) == sorted(k.keyid for k in env.keys[:2])
    assert (rep["committed"], rep["highest_committed_version"], b["intact"]) == (True, 3, True)
    text = run_cli("models", "--state-dir", str(env.tmp / "state")).stdout
    assert "slot b:    active: vibration-ae-fp32-onnx v3 (intact" in text


def test_manual_rollback_serves_previous_then_bundled(env: Env) -> None:
    sd = env.tmp / "state"
    store = SlotStore(sd)
    install(env, store, real_bundle(env, copy_model(env.tmp / "v2", 2), "2.b"))
    install(env, store, real_bundle(env, copy_model(env.tmp / "v3", 3), "3.b"))
    p = run_cli("rollback", "--state-dir", str(sd))
    assert p.returncode == 0, p.stderr
    assert "rolled back from v3: slot a v2 serves; takes effect when the agent starts" in p.stdout
    st = SlotStore(sd).state
    assert (st.phase, st.active_version, st.highest_committed_version) == (Phase.ROLLED_BACK, 2, 3)
    assert run_cli("rollback", "--state-dir", str(sd)).returncode == 0  # back to v3: a toggle
    # An empty state dir: nothing to roll back to, a clear error, exit 1.
    p = run_cli("rollback", "--state-dir", str(env.tmp / "empty"))
    assert p.returncode == 1
    assert "no OTA model is active" in p.stderr


def test_slot_model_that_does_not_load_falls_back_to_bundled(env: Env) -> None:
    sd = env.tmp / "state"
    bad = copy_model(env.tmp / "bad", 2)
    card = json.loads((bad / "model.json").read_text())
    card["golden"]["scores"] = [s + 1.0 for s in card["golden"]["scores"]]  # wrong runtime?
    (bad / "model.json").write_text(json.dumps(card))
    install(env, SlotStore(sd), real_bundle(env, bad, "bad.b"))
    boot = SlotBoot.open(sd)
    model = boot.load(FP32, Profile(name=PROFILE), "vib")
    assert model.card.version == 1
    assert boot.sources == {"vib": "bundled"}
    assert "does not load" in boot.notes[0]
    assert SlotStore(sd).state.active is None  # recorded: a restart does not try it again


def test_slot_model_of_the_stream_family_serves_at_start(env: Env) -> None:
    sd = env.tmp / "state"
    install(env, SlotStore(sd), real_bundle(env, copy_model(env.tmp / "v2", 2), "2.b"))
    boot = SlotBoot.open(sd)
    model = boot.load(FP32, Profile(name=PROFILE), "vib")
    assert (model.card.version, boot.sources["vib"]) == (2, "slot a")


def test_models_on_a_mistyped_state_dir_says_so(env: Env) -> None:
    p = run_cli("models", "--state-dir", str(env.tmp / "no-such-dir"))
    assert p.returncode == 1
    assert "does not exist" in p.stderr  # not "slot a: empty", which reads as no model
