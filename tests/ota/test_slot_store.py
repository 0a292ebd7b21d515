"""The A/B slot store: the pure state machine, and recovery after a crash in every phase
(a crash is a new SlotStore on the same state dir: all in-memory state is gone)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from conftest import NOW, PROFILE, Env

from edge_agent.updates.slots import (
    HISTORY_LIMIT,
    Phase,
    Slot,
    SlotsState,
    TransitionError,
    begin_download,
    commit,
    install_initial,
    promote,
)
from edge_agent.updates.store import SlotStore
from ota.bundle import read_header
from ota.verify import VerifiedManifest, verify


def verified(env: Env, bundle: Path, installed: int = -1) -> VerifiedManifest:
    h = read_header(bundle)
    return verify(h.manifest_bytes, h.signatures, env.root, installed, PROFILE, NOW)


def installed_store(env: Env) -> SlotStore:
    store = SlotStore(env.tmp / "state")
    b2 = env.bundle("v2.bundle")
    store.install_initial(b2, verified(env, b2), NOW)
    return store


def drive(env: Env, store: SlotStore, until: Phase) -> None:
    """Run a v3 update through the real API until `until` is the persisted phase."""
    b3 = env.bundle("v3.bundle", version=3)
    vm = verified(env, b3, installed=store.state.highest_committed_version)
    t = NOW
    store.begin_update(3, t)
    if until is Phase.DOWNLOADING:
        return
    if until is Phase.ABANDONED:
        store.abandon("golden vectors differ", t)
        return
    store.install_candidate(b3, vm, t)
    steps = [
        (Phase.UNPACKED, lambda: None),
        (Phase.VALIDATED, lambda: store.mark_validated(t)),
        (Phase.SHADOW, lambda: store.mark_shadow(t)),
        (Phase.PROMOTED, lambda: store.promote(t)),
        (Phase.COMMITTED, lambda: store.commit(t)),
    ]
    for phase, step in steps:
        step()
        if phase is until:
            return
    store.rollback("manual", t)
    assert until is Phase.ROLLED_BACK


EXPECTED = {  # phase at crash -> (slot serving after restart, its version, phase after)
    Phase.DOWNLOADING: (Slot.A, 2, Phase.ABANDONED),
    Phase.UNPACKED: (Slot.A, 2, Phase.ABANDONED),
    Phase.VALIDATED: (Slot.A, 2, Phase.ABANDONED),
    Phase.SHADOW: (Slot.A, 2, Phase.ABANDONED),
    Phase.PROMOTED: (Slot.A, 2, Phase.ROLLED_BACK),
    Phase.COMMITTED: (Slot.B, 3, Phase.COMMITTED),
    Phase.ROLLED_BACK: (Slot.A, 2, Phase.ROLLED_BACK),
    Phase.ABANDONED: (Slot.A, 2, Phase.ABANDONED),
}


@pytest.mark.parametrize("phase", list(EXPECTED), ids=lambda p: p.value)
def test_recovery_after_crash_in_every_phase(env: Env, phase: Phase) -> None:
    drive(env, installed_store(env), phase)
    restarted = SlotStore(env.tmp / "state")
    assert restarted.state.phase is phase
    report = restarted.recover(NOW + timedelta(seconds=5))
    slot, version, after = EXPECTED[phase]
    s = restarted.state
    assert (s.active, s.active_version, s.phase) == (slot, version, after), report
    assert s.committed
    assert s.candidate is None
    assert restarted.check_slot(slot) is None, "a verified model must serve"
    manifest = restarted.active_manifest()
    assert manifest is not None
    assert manifest.version == version
    if after is Phase.ABANDONED:
        assert not restarted.slot_dir(Slot.B).exists(), "an unproven candidate is cleared"
    # A second restart changes nothing: recovery is idempotent.
    again = SlotStore(env.tmp / "state").recover(NOW + timedelta(seconds=6))
    assert again.actions == ()


def test_crash_during_unpack_leaves_no_staging(env: Env) -> None:
    store = installed_store(env)
    store.begin_update(3, NOW)
    staging = store.slots_dir / ".b.unpacking"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"half")
    SlotStore(env.tmp / "state").recover(NOW)
    assert not staging.exists()


def test_corrupt_active_slot_falls_back_to_previous(env: Env) -> None:
    store = installed_store(env)
    drive(env, store, Phase.COMMITTED)
    model = store.slot_dir(Slot.B) / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # bit rot on the SD card
    restarted = SlotStore(env.tmp / "state")
    restarted.recover(NOW)
    assert (restarted.state.active, restarted.state.active_version) == (Slot.A, 2)
    assert "sha256" in restarted.state.last_result


def test_corrupt_only_model_leaves_nothing_serving(env: Env) -> None:
    store = installed_store(env)
    (store.slot_dir(Slot.A) / "model.onnx").unlink()
    restarted = SlotStore(env.tmp / "state")
    restarted.recover(NOW)
    assert restarted.active_dir() is None
    assert "no verified model" in restarted.state.last_result


def test_no_new_update_while_on_trial(env: Env) -> None:
    store = installed_store(env)
    drive(env, store, Phase.PROMOTED)
    with pytest.raises(TransitionError):
        store.begin_update(4, NOW)


def test_anti_rollback_high_water_mark_survives_restart(env: Env) -> None:
    store = installed_store(env)
    drive(env, store, Phase.ROLLED_BACK)
    s = SlotStore(env.tmp / "state").state
    assert s.active_version == 2
    assert s.highest_committed_version == 3  # v3 and below stay refused


def test_install_candidate_must_match_claimed_version(env: Env) -> None:
    from edge_agent.errors import StateError

    store = installed_store(env)
    store.begin_update(5, NOW)
    b3 = env.bundle("v3.bundle", version=3)
    with pytest.raises(StateError, match="v3"):
        store.install_candidate(b3, verified(env, b3, 2), NOW)


def test_pure_transitions_refuse_wrong_phase() -> None:
    s = install_initial(SlotsState(), 1, NOW)
    with pytest.raises(TransitionError):
        promote(s, NOW)
    with pytest.raises(TransitionError):
        commit(s, NOW)
    s = begin_download(s, 2, NOW)
    with pytest.raises(TransitionError):
        begin_download(s, 3, NOW)
    assert s.candidate is Slot.B


def test_state_round_trips_and_history_is_bounded() -> None:
    s = install_initial(SlotsState(), 1, NOW)
    for _ in range(HISTORY_LIMIT + 10):
        s = begin_download(s, 2, NOW)
        from edge_agent.updates.slots import abandon

        s = abandon(s, "x", NOW)
    assert len(s.history) == HISTORY_LIMIT
    assert SlotsState.from_dict(s.to_dict()) == s
