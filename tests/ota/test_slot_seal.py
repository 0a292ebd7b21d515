"""At start the serving slot is re-checked against the signed evidence it was installed
with, not only against the manifest copy stored beside it: a slot whose model file was
swapped on disk, with its card and manifest copy rewritten to match, never serves."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from conftest import PROFILE, Env
from otamodels import FP32, copy_model, nan_model
from test_slot_cli_and_boot import install, real_bundle

from edge_agent.profiles import Profile
from edge_agent.updates.boot import SlotBoot
from edge_agent.updates.seal import SealTrust
from edge_agent.updates.store import SlotStore
from ota.canonical import canonical_bytes
from ota.root import SignedRoot


def tamper_slot(slot_dir: Path, manifest_copy: Path, scratch: Path) -> bytes:
    """Swap the slot's model for another real model, rewriting its card and the stored
    manifest copy so that every unsigned check agrees; returns the new model's bytes."""
    other = nan_model(scratch, 2)
    data = (other / "model.onnx").read_bytes()
    (slot_dir / "model.onnx").write_bytes(data)
    card = json.loads((slot_dir / "model.json").read_text())
    card["sha256"], card["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (slot_dir / "model.json").write_text(json.dumps(card))
    m = json.loads(manifest_copy.read_bytes())
    for f in m["files"]:
        p = slot_dir / f["path"]
        f["size"], f["sha256"] = p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()
    manifest_copy.write_bytes(canonical_bytes(m))
    return data


def root_file(env: Env) -> Path:
    doc = SignedRoot(env.root)
    for k in env.keys[:2]:
        doc = doc.sign(k)
    path = env.tmp / "root.json"
    path.write_bytes(doc.to_bytes())
    return path


def test_tampered_active_slot_with_rewritten_manifest_copy_falls_back_to_verified_slot(
    env: Env,
) -> None:
    sd = env.tmp / "state"
    store = SlotStore(sd)
    install(env, store, real_bundle(env, copy_model(env.tmp / "v2", 2), "2.b"))
    install(env, store, real_bundle(env, copy_model(env.tmp / "v3", 3), "3.b"))
    active = store.state.active
    assert active is not None
    slot_dir = store.slot_dir(active)
    bad = tamper_slot(slot_dir, sd / "slots" / f"{active.value}.manifest.json", env.tmp / "x")
    # The stored manifest copy alone no longer catches it: that is the gap closed here.
    assert SlotStore(sd).check_slot(active) is None
    boot = SlotBoot.open(sd, trust=SealTrust(root_file=root_file(env)))
    model = boot.load(FP32, Profile(name=PROFILE), "vib")
    assert (model.card.version, boot.sources["vib"]) == (2, "slot a")
    assert (model.card.directory / "model.onnx").read_bytes() != bad
    note = " ".join(boot.notes)
    assert f"slot {active.value}: manifest not signed by the trusted root" in note, note
    assert "fell back to slot a" in note, note
    assert not slot_dir.exists()  # the tampered files are gone, never loaded


def test_untampered_slots_pass_the_signed_recheck_and_unknown_signers_do_not(
    env: Env,
) -> None:
    sd = env.tmp / "state"
    store = SlotStore(sd)
    install(env, store, real_bundle(env, copy_model(env.tmp / "v2", 2), "2.b"))
    rf = root_file(env)
    boot = SlotBoot.open(sd, trust=SealTrust(root_file=rf))
    assert boot.load(FP32, Profile(name=PROFILE), "vib").card.version == 2
    assert boot.notes == []
    # A seal removed on disk is not a way around the check.
    (sd / "slots" / "a.seal.json").unlink()
    boot = SlotBoot.open(sd, trust=SealTrust(root_file=rf))
    assert boot.load(FP32, Profile(name=PROFILE), "vib").card.version == 1
    assert "slot a: no signed record (seal)" in boot.notes[0], boot.notes
    assert boot.sources["vib"] == "bundled"


def test_without_a_trust_root_slots_are_checked_against_their_manifest_copy(env: Env) -> None:
    sd = env.tmp / "state"
    install(env, SlotStore(sd), real_bundle(env, copy_model(env.tmp / "v2", 2), "2.b"))
    shutil.rmtree(env.tmp / "v2")
    boot = SlotBoot.open(sd, trust=SealTrust())
    assert boot.load(FP32, Profile(name=PROFILE), "vib").card.version == 2
