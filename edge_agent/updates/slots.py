"""The A/B slot state machine (pure: states in, states out, time passed in; no I/O).

An update moves one candidate through
  idle -> downloading -> unpacked -> validated -> shadow -> promoted (trial) -> committed
and can leave it at any step as `abandoned` (before promotion) or `rolled_back` (after).
`edge_agent.updates.store` persists these states atomically and does the file work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from edge_agent.errors import StateError

__all__ = [
    "HISTORY_LIMIT",
    "HistoryEntry",
    "Phase",
    "Recovery",
    "Slot",
    "SlotsState",
    "TransitionError",
    "abandon",
    "begin_download",
    "commit",
    "drop_active",
    "fall_back",
    "install_initial",
    "mark_shadow",
    "mark_unpacked",
    "mark_validated",
    "plan_recovery",
    "promote",
    "rollback",
]

HISTORY_LIMIT = 50  # bounded: slots.json must not grow on a device that updates for years


class TransitionError(StateError):
    """A transition was asked for in a phase that does not allow it."""


class Slot(str, Enum):
    A = "a"
    B = "b"

    @property
    def other(self) -> Slot:
        return Slot.B if self is Slot.A else Slot.A


class Phase(str, Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    UNPACKED = "unpacked"
    VALIDATED = "validated"
    SHADOW = "shadow"
    PROMOTED = "promoted"  # serving, on trial: not yet committed
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    ABANDONED = "abandoned"


PRE_PROMOTION = frozenset({Phase.DOWNLOADING, Phase.UNPACKED, Phase.VALIDATED, Phase.SHADOW})
AT_REST = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK, Phase.ABANDONED})


@dataclass(frozen=True)
class HistoryEntry:
    ts: datetime
    phase: Phase
    version: int | None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts.isoformat(),
            "phase": self.phase.value,
            "version": self.version,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            datetime.fromisoformat(d["ts"]), Phase(d["phase"]), d.get("version"), d["reason"]
        )


@dataclass(frozen=True)
class SlotsState:
    """What slots.json holds. `versions` maps a slot to the model version it contains;
    `bad` maps a slot the agent rolled back for cause (failed trial, crash during its
    trial) to why: a manual rollback refuses to serve it again unless forced.
    `lost_version`: the version whose slot the start-up check dropped (its files missing
    or changed on disk) -- the device may install that committed version again from the
    same signed target (`edge_agent.updates.directed`); cleared by the next commit or any
    deliberate rollback."""

    phase: Phase = Phase.IDLE
    active: Slot | None = None
    previous: Slot | None = None
    candidate: Slot | None = None
    committed: bool = False
    highest_committed_version: int = -1
    versions: Mapping[Slot, int] = field(default_factory=dict)
    last_result: str = ""
    history: tuple[HistoryEntry, ...] = ()
    bad: Mapping[Slot, str] = field(default_factory=dict)
    lost_version: int | None = None

    @property
    def active_version(self) -> int | None:
        return None if self.active is None else self.versions.get(self.active)

    @property
    def candidate_version(self) -> int | None:
        return None if self.candidate is None else self.versions.get(self.candidate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "active": None if self.active is None else self.active.value,
            "previous": None if self.previous is None else self.previous.value,
            "candidate": None if self.candidate is None else self.candidate.value,
            "committed": self.committed,
            "highest_committed_version": self.highest_committed_version,
            "versions": {s.value: v for s, v in self.versions.items()},
            "last_result": self.last_result,
            "history": [h.to_dict() for h in self.history],
            "bad": {s.value: why for s, why in self.bad.items()},
            "lost_version": self.lost_version,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SlotsState:
        def slot(v: object) -> Slot | None:
            return None if v is None else Slot(v)

        try:
            return cls(
                phase=Phase(d["phase"]),
                active=slot(d.get("active")),
                previous=slot(d.get("previous")),
                candidate=slot(d.get("candidate")),
                committed=bool(d["committed"]),
                highest_committed_version=int(d["highest_committed_version"]),
                versions={Slot(k): int(v) for k, v in d.get("versions", {}).items()},
                last_result=str(d.get("last_result", "")),
                history=tuple(HistoryEntry.from_dict(h) for h in d.get("history", [])),
                bad={Slot(k): str(v) for k, v in d.get("bad", {}).items()},
                lost_version=_opt_int(d.get("lost_version")),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise StateError(f"slots.json is malformed: {e!r}") from e


def _opt_int(v: object) -> int | None:
    if v is None:
        return None
    if type(v) is not int:
        raise ValueError(f"not an integer: {v!r}")
    return v


def _step(
    s: SlotsState,
    phase: Phase,
    now: datetime,
    reason: str = "",
    *,
    version: int | None = None,
    **changes: Any,
) -> SlotsState:
    new = dataclasses.replace(s, phase=phase, **changes)
    if version is None:
        version = new.candidate_version if new.candidate is not None else new.active_version
    entry = HistoryEntry(now, phase, version, reason)
    return dataclasses.replace(new, history=(*new.history, entry)[-HISTORY_LIMIT:])


def _require(s: SlotsState, allowed: frozenset[Phase] | set[Phase], what: str) -> None:
    if s.phase not in allowed:
        raise TransitionError(f"cannot {what} while {s.phase.value}")


def install_initial(s: SlotsState, version: int, now: datetime) -> SlotsState:
    """A factory model placed in slot A on first start; committed, it is the baseline."""
    if s.active is not None:
        raise TransitionError("a model is already installed")
    return _step(
        s,
        Phase.COMMITTED,
        now,
        "initial install",
        active=Slot.A,
        committed=True,
        versions={Slot.A: version},
        highest_committed_version=max(s.highest_committed_version, version),
        last_result="installed",
    )


def begin_download(s: SlotsState, version: int, now: datetime) -> SlotsState:
    """Claim the inactive slot. Its old content (maybe `previous`) is given up here."""
    _require(s, AT_REST, "start an update")
    if s.active is not None and not s.committed:
        raise TransitionError("the active model is not committed")
    target = Slot.A if s.active is None else s.active.other
    versions = {k: v for k, v in s.versions.items() if k is not target}
    versions[target] = version
    return _step(
        s,
        Phase.DOWNLOADING,
        now,
        candidate=target,
        previous=None if s.previous is target else s.previous,
        versions=versions,
        bad=_unmark(s, target),
    )


def mark_unpacked(s: SlotsState, now: datetime) -> SlotsState:
    _require(s, {Phase.DOWNLOADING}, "mark unpacked")
    return _step(s, Phase.UNPACKED, now)


def mark_validated(s: SlotsState, now: datetime) -> SlotsState:
    _require(s, {Phase.UNPACKED}, "mark validated")
    return _step(s, Phase.VALIDATED, now)


def mark_shadow(s: SlotsState, now: datetime) -> SlotsState:
    _require(s, {Phase.VALIDATED}, "start shadow")
    return _step(s, Phase.SHADOW, now)


def promote(s: SlotsState, now: datetime) -> SlotsState:
    """Switch the active pointer to the candidate; it serves on trial, uncommitted."""
    _require(s, {Phase.VALIDATED, Phase.SHADOW}, "promote")
    return _step(
        s, Phase.PROMOTED, now, active=s.candidate, previous=s.active, candidate=None,
        committed=False,
    )  # fmt: skip


def commit(s: SlotsState, now: datetime) -> SlotsState:
    _require(s, {Phase.PROMOTED}, "commit")
    v = s.active_version if s.active_version is not None else -1
    return _step(
        s,
        Phase.COMMITTED,
        now,
        committed=True,
        highest_committed_version=max(s.highest_committed_version, v),
        last_result=f"committed v{v}",
        lost_version=None,
    )


def abandon(s: SlotsState, reason: str, now: datetime) -> SlotsState:
    """Drop a candidate before promotion; the active model never changed."""
    _require(s, PRE_PROMOTION, "abandon")
    versions = {k: v for k, v in s.versions.items() if k is not s.candidate}
    return _step(
        s, Phase.ABANDONED, now, reason, candidate=None, versions=versions,
        last_result=f"abandoned v{s.candidate_version}: {reason}",
        version=s.candidate_version,
    )  # fmt: skip


def _unmark(s: SlotsState, slot: Slot | None) -> dict[Slot, str]:
    return {k: why for k, why in s.bad.items() if k is not slot}


def rollback(s: SlotsState, reason: str, now: datetime, *, for_cause: bool = False) -> SlotsState:
    """Serve the previous slot again: automatic during a trial (`for_cause`: the slot left
    is marked bad), or manual after a commit."""
    _require(s, {Phase.PROMOTED, Phase.COMMITTED, Phase.ROLLED_BACK}, "roll back")
    if s.previous is None or s.active is None:
        raise TransitionError("no previous model to roll back to")
    left = s.active_version
    marks = dict(s.bad)  # a forced return onto a marked slot keeps its mark (it is true)
    if for_cause:
        marks[s.active] = f"v{left} rolled back by the agent: {reason}"
    return _step(
        s, Phase.ROLLED_BACK, now, reason, active=s.previous, previous=s.active,
        committed=True, last_result=f"rolled back from v{left}: {reason}", bad=marks,
        lost_version=None,
    )  # fmt: skip


@dataclass(frozen=True)
class Recovery:
    """What start-up after a crash must do: the new state and the slot to clear, if any."""

    state: SlotsState
    clear: Slot | None
    changed: bool


def plan_recovery(s: SlotsState, now: datetime) -> Recovery:
    """Decide the state after a crash. Unproven candidates are dropped; an uncommitted
    promoted model is rolled back, or dropped when there is no previous slot (a crash
    during its trial counts against it)."""
    if s.phase in PRE_PROMOTION:
        return Recovery(abandon(s, f"interrupted while {s.phase.value}", now), s.candidate, True)
    if s.phase is Phase.PROMOTED:
        if s.previous is not None:
            return Recovery(
                rollback(s, "interrupted during trial", now, for_cause=True), None, True
            )
        # No previous slot: the agent's bundled model serves again; the candidate's
        # trial was interrupted, which counts against it (it is dropped, not committed).
        return Recovery(drop_active(s, "interrupted during trial", now), s.active, True)
    return Recovery(s, None, False)


def fall_back(s: SlotsState, reason: str, now: datetime, *, lost: bool = False) -> SlotsState:
    """The active slot cannot serve: serve the (checked) previous slot. `lost`: its
    files failed the start-up check, so its version may be installed again (see
    `SlotsState.lost_version`); otherwise (fails to load, a manual step back) not."""
    if s.previous is None:
        return drop_active(s, reason, now, lost=lost)
    versions = {k: v for k, v in s.versions.items() if k is not s.active}
    return _step(
        s, Phase.ROLLED_BACK, now, reason, active=s.previous, previous=None, candidate=None,
        committed=True, versions=versions, last_result=f"fell back to previous: {reason}",
        bad=_unmark(s, s.active), lost_version=_lost(s, lost),
    )  # fmt: skip


def _lost(s: SlotsState, lost: bool) -> int | None:
    return s.active_version if lost else None


def drop_active(s: SlotsState, reason: str, now: datetime, *, lost: bool = False) -> SlotsState:
    """The active slot cannot serve and nothing verified is left to serve (`lost`: as
    in `fall_back`)."""
    versions = {k: v for k, v in s.versions.items() if k is not s.active}
    return _step(
        s, Phase.IDLE, now, reason, active=None, previous=None, candidate=None,
        committed=False, versions=versions, last_result=f"no verified model: {reason}",
        bad=_unmark(s, s.active), lost_version=_lost(s, lost),
    )  # fmt: skip
