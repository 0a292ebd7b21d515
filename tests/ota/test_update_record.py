"""Bookkeeping keyed by signed identity (bounded, persisted), per-stream thresholds in
shadow and trial, and the mark on a slot rolled back for cause (pure parts and files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import NOW

from edge_agent.updates.checks import ShadowTally, judge_shadow
from edge_agent.updates.record import (
    ATTEMPTS_KEPT,
    HANDLED_KEPT,
    RECORD_FILE,
    TargetId,
    UpdateRecord,
)
from edge_agent.updates.slots import (
    Phase,
    Slot,
    SlotsState,
    TransitionError,
    begin_download,
    commit,
    install_initial,
    mark_shadow,
    mark_unpacked,
    mark_validated,
    plan_recovery,
    promote,
    rollback,
)


def tid(n: int) -> TargetId:
    return TargetId.of("vib", n, f"manifest {n}".encode())


def test_record_is_keyed_by_signed_identity_persisted_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / RECORD_FILE
    rec = UpdateRecord(path)
    for n in range(HANDLED_KEPT + 20):
        rec.finish(tid(n), f"committed v{n}", 1.0)
    for n in range(ATTEMPTS_KEPT + 5):
        rec.begin_attempt(tid(1000 + n))
    again = UpdateRecord(path)  # a restart
    assert len(again.handled) == HANDLED_KEPT
    assert again.outcome(tid(HANDLED_KEPT + 19)) == f"committed v{HANDLED_KEPT + 19}"
    assert again.outcome(tid(0)) is None  # the oldest went
    assert len(again.attempts) == ATTEMPTS_KEPT
    assert again.begin_attempt(tid(1000 + ATTEMPTS_KEPT + 4)) == 2
    # Same name and version, other signed content: another target.
    assert again.outcome(TargetId.of("vib", HANDLED_KEPT + 19, b"other")) is None


def test_record_from_an_older_agent_keyed_on_unsigned_hashes_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / RECORD_FILE
    path.write_text('{"handled": [{"sha256": "ab", "result": "rejected"}], "attempts": {"ab": 3}}')
    rec = UpdateRecord(path)
    assert (rec.handled, rec.attempts) == ([], {})


def test_interrupted_attempts_are_counted_and_a_failed_download_gives_its_count_back(
    tmp_path: Path,
) -> None:
    rec = UpdateRecord(tmp_path / RECORD_FILE)
    assert rec.begin_attempt(tid(1)) == 1
    assert rec.begin_attempt(tid(1)) == 2
    rec.undo_attempt(tid(1))
    assert UpdateRecord(tmp_path / RECORD_FILE).attempts == {tid(1).key: 1}


def test_each_stream_is_judged_with_its_own_threshold() -> None:
    """Two streams of one family with thresholds 1 and 10: stream b's candidate scores of
    about 5 are normal there, and must not count as alarms against stream a's 1."""
    tally = ShadowTally()
    quiet_a = np.full(50, 0.5)
    tally.add(quiet_a, quiet_a.copy(), 1.0, 1.0)
    normal_b = np.full(50, 5.0)
    tally.add(normal_b, normal_b.copy(), 10.0, 10.0)
    assert (tally.active_over, tally.candidate_over, tally.windows) == (0, 0, 100)
    assert judge_shadow(tally).ok
    alarming_b = np.full(50, 50.0)
    tally.add(normal_b, alarming_b, 10.0, 10.0)
    assert tally.candidate_over == 50
    assert not judge_shadow(tally).ok


def _on_trial() -> SlotsState:
    s = install_initial(SlotsState(), 2, NOW)
    s = begin_download(s, 3, NOW)
    s = mark_shadow(mark_validated(mark_unpacked(s, NOW), NOW), NOW)
    return promote(s, NOW)


def test_rollback_for_cause_marks_the_slot_left_and_a_new_update_clears_it() -> None:
    s = rollback(_on_trial(), "trial: 3 NaN/inf scores", NOW, for_cause=True)
    assert (s.active, s.previous) == (Slot.A, Slot.B)
    assert "trial: 3 NaN/inf scores" in s.bad[Slot.B]
    assert SlotsState.from_dict(s.to_dict()).bad == s.bad  # persisted
    s = begin_download(s, 4, NOW)  # the marked slot is claimed for new content
    assert s.bad == {}


def test_manual_rollback_marks_nothing_and_crash_during_trial_marks() -> None:
    s = commit(_on_trial(), NOW)
    assert rollback(s, "technician", NOW).bad == {}
    rec = plan_recovery(_on_trial(), NOW)
    assert rec.state.phase is Phase.ROLLED_BACK
    assert Slot.B in rec.state.bad


def test_rollback_without_previous_is_refused() -> None:
    s = install_initial(SlotsState(), 2, NOW)
    with pytest.raises(TransitionError):
        rollback(s, "x", NOW)
