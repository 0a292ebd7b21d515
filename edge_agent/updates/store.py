"""The device's A/B model slot store: `slots/a`, `slots/b` and `slots.json` under the
state dir. Decisions come from the pure `edge_agent.updates.slots` machine; this module does the
files, always in an order where a crash between two steps is recoverable:
state is written (atomically) before a slot is destroyed, and after it is filled.

Each slot holds the unpacked payload; `slots/<x>.manifest.json` beside it holds the exact
verified manifest bytes, against which the slot is re-checked on every start.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import StateError
from edge_agent.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    read_json,
    sha256_file,
)
from edge_agent.updates.seal import SealTrust, TufEvidence, check_seal, clear_seal, write_seal
from edge_agent.updates.slots import (
    Phase,
    Slot,
    SlotsState,
    abandon,
    begin_download,
    commit,
    drop_active,
    fall_back,
    install_initial,
    mark_shadow,
    mark_unpacked,
    mark_validated,
    plan_recovery,
    promote,
    rollback,
)
from ota.errors import OtaError
from ota.manifest import Manifest

if TYPE_CHECKING:  # signatures (cryptography) and tar unpacking: only when installing
    from ota.verify import VerifiedManifest

__all__ = ["STATE_FILE", "RecoveryReport", "SlotStore"]

log = logging.getLogger(__name__)
STATE_FILE = "slots.json"


@dataclass(frozen=True)
class RecoveryReport:
    before: SlotsState
    after: SlotsState
    actions: tuple[str, ...]


class SlotStore:
    """A/B slots in `state_dir`. Every method that changes state persists it before returning."""

    def __init__(self, state_dir: Path, trust: SealTrust | None = None) -> None:
        """`trust`: the anchors slots are re-checked against (the agent's); without one
        (the technician's CLI) slots are checked against their stored manifests only."""
        self.root = Path(state_dir)
        self.trust = trust
        self.slots_dir = self.root / "slots"
        self.state_path = self.root / STATE_FILE
        self._state = self._load()

    # --- reading -------------------------------------------------------------------------

    def _load(self) -> SlotsState:
        if not self.state_path.exists():
            return SlotsState()
        try:
            raw = read_json(self.state_path)
        except PermissionError as e:
            raise StateError(
                f"{self.state_path}: permission denied: give the state dir back to the "
                f"agent's user (chown -R <agent user> {self.root})"
            ) from e
        except (OSError, ValueError) as e:
            raise StateError(f"{self.state_path}: unreadable: {e}") from e
        if not isinstance(raw, dict):
            raise StateError(f"{self.state_path}: expected a JSON object")
        return SlotsState.from_dict(raw)

    @classmethod
    def quarantine(cls, state_dir: Path) -> Path:
        """Move a damaged slots.json aside (kept for a post-mortem); returns its new path.
        The store opened afterwards starts empty: no slot serves until the next update."""
        src = Path(state_dir) / STATE_FILE
        dst = src.with_name(f"{STATE_FILE}.damaged")
        try:
            src.replace(dst)
            fsync_dir(src.parent)
        except OSError as e:
            raise StateError(f"{src}: damaged and cannot be moved aside: {e.strerror}") from e
        return dst

    @property
    def state(self) -> SlotsState:
        return self._state

    def slot_dir(self, slot: Slot) -> Path:
        return self.slots_dir / slot.value

    def _meta_path(self, slot: Slot) -> Path:
        return self.slots_dir / f"{slot.value}.manifest.json"

    def manifest(self, slot: Slot) -> Manifest | None:
        try:
            return Manifest.from_bytes(self._meta_path(slot).read_bytes())
        except (OSError, OtaError):
            return None

    def active_dir(self) -> Path | None:
        """The directory of the model that should serve now, or None."""
        return None if self._state.active is None else self.slot_dir(self._state.active)

    def active_manifest(self) -> Manifest | None:
        return None if self._state.active is None else self.manifest(self._state.active)

    def check_slot(self, slot: Slot) -> str | None:
        """Re-check a slot's files against its stored manifest and, with an anchored
        `trust`, that manifest and those files against the signed evidence they were
        installed with (`edge_agent.updates.seal`); None if intact, else why."""
        try:
            manifest_bytes = self._meta_path(slot).read_bytes()
            m = Manifest.from_bytes(manifest_bytes)
        except (OSError, OtaError):
            return f"slot {slot.value}: no readable manifest"
        d = self.slot_dir(slot)
        for f in m.files:
            p = d / f.path
            if p.is_symlink() or not p.is_file():
                return f"slot {slot.value}: {f.path} missing"
            if p.stat().st_size != f.size:
                return f"slot {slot.value}: {f.path} has the wrong size"
            if sha256_file(p) != f.sha256:
                return f"slot {slot.value}: {f.path} sha256 mismatch"
        if self.trust is not None and self.trust.anchored:
            return check_seal(self.slots_dir, slot.value, d, manifest_bytes, self.trust)
        return None

    # --- writing -------------------------------------------------------------------------

    def _save(self, new: SlotsState) -> SlotsState:
        atomic_write_json(self.state_path, new.to_dict())
        self._state = new
        log.info("slots: %s (active %s)", new.phase.value, new.active)
        return new

    def _signers_path(self, slot: Slot) -> Path:
        return self.slots_dir / f"{slot.value}.signers.json"

    def signers(self, slot: Slot) -> tuple[str, ...]:
        """Key ids that signed the bundle a slot was filled from (for `edge-agent models`)."""
        try:
            raw = read_json(self._signers_path(slot))
        except (OSError, ValueError):
            return ()
        return tuple(str(k) for k in raw) if isinstance(raw, list) else ()

    def _clear(self, slot: Slot) -> None:
        self._meta_path(slot).unlink(missing_ok=True)
        self._signers_path(slot).unlink(missing_ok=True)
        clear_seal(self.slots_dir, slot.value)
        for p in (self.slot_dir(slot), self.slots_dir / f".{slot.value}.unpacking"):
            if p.exists():
                shutil.rmtree(p)
        if self.slots_dir.exists():
            fsync_dir(self.slots_dir)

    def _fill(
        self, slot: Slot, bundle: Path, verified: VerifiedManifest, tuf: TufEvidence | None
    ) -> None:
        self._clear(slot)
        from ota.bundle import read_header
        from ota.unpack import unpack

        unpack(bundle, verified, self.slot_dir(slot))
        write_seal(self.slots_dir, slot.value, bundle, read_header(bundle).signatures, tuf)
        atomic_write_json(self._signers_path(slot), list(verified.signer_keyids))
        atomic_write_bytes(self._meta_path(slot), verified.manifest_bytes)

    def install_initial(
        self,
        bundle: Path,
        verified: VerifiedManifest,
        now: datetime,
        tuf: TufEvidence | None = None,
    ) -> Path:
        """First install (factory model) into slot A, committed."""
        if self._state.active is not None:
            raise StateError("a model is already installed; use an update")
        self._fill(Slot.A, bundle, verified, tuf)
        self._save(install_initial(self._state, verified.manifest.version, now))
        return self.slot_dir(Slot.A)

    def begin_update(self, version: int, now: datetime) -> Path:
        """Claim the inactive slot (state first, then wipe it); returns its directory."""
        new = self._save(begin_download(self._state, version, now))
        assert new.candidate is not None
        self._clear(new.candidate)
        return self.slot_dir(new.candidate)

    def install_candidate(
        self,
        bundle: Path,
        verified: VerifiedManifest,
        now: datetime,
        tuf: TufEvidence | None = None,
    ) -> Path:
        """Unpack a verified bundle into the claimed slot, keeping its signed evidence
        (its signatures; `tuf`: the channel's target record); then the state says
        `unpacked`."""
        s = self._state
        if s.phase is not Phase.DOWNLOADING or s.candidate is None:
            raise StateError(f"no update in progress (phase {s.phase.value})")
        if verified.manifest.version != s.candidate_version:
            raise StateError(
                f"bundle v{verified.manifest.version} is not the v{s.candidate_version} "
                "this update was started for"
            )
        self._fill(s.candidate, bundle, verified, tuf)
        self._save(mark_unpacked(s, now))
        return self.slot_dir(s.candidate)

    def mark_validated(self, now: datetime) -> SlotsState:
        return self._save(mark_validated(self._state, now))

    def mark_shadow(self, now: datetime) -> SlotsState:
        return self._save(mark_shadow(self._state, now))

    def promote(self, now: datetime) -> SlotsState:
        """Atomic pointer switch: after this returns, active_dir() is the candidate's slot."""
        return self._save(promote(self._state, now))

    def commit(self, now: datetime) -> SlotsState:
        return self._save(commit(self._state, now))

    def rollback(
        self, reason: str, now: datetime, *, for_cause: bool = False, force: bool = False
    ) -> SlotsState:
        """Serve the previous slot (automatic in trial, or the technician's manual rollback).
        `for_cause` marks the slot left as bad; a slot so marked is refused (StateError,
        saying why) unless `force`."""
        s = self._state
        if s.previous is not None and (why := self.check_slot(s.previous)) is not None:
            raise StateError(f"cannot roll back: {why}")
        if s.previous is not None and s.previous in s.bad and not force:
            raise StateError(
                f"refusing to serve slot {s.previous.value} again: {s.bad[s.previous]}; "
                "add --force to serve it anyway"
            )
        return self._save(rollback(s, reason, now, for_cause=for_cause))

    def step_back(
        self, reason: str, now: datetime, *, for_cause: bool = False, force: bool = False
    ) -> SlotsState:
        """Stop serving the active slot: the previous one serves if there is one, else
        no slot (the bundled model). For rollbacks, manual or after a failed trial."""
        if self._state.previous is not None:
            return self.rollback(reason, now, for_cause=for_cause, force=force)
        self.fall_back(reason, now)
        return self._state

    def abandon(self, reason: str, now: datetime) -> SlotsState:
        cand = self._state.candidate
        new = self._save(abandon(self._state, reason, now))
        if cand is not None:
            self._clear(cand)
        return new

    # --- start-up ------------------------------------------------------------------------

    def recover(self, now: datetime) -> RecoveryReport:
        """Bring the store to a state where a verified model (or none) serves after a crash."""
        before = self._state
        actions: list[str] = []
        plan = plan_recovery(before, now)
        if plan.changed:
            self._save(plan.state)
            actions.append(f"{before.phase.value} -> {plan.state.phase.value}")
        if plan.clear is not None:
            self._clear(plan.clear)
            actions.append(f"cleared slot {plan.clear.value}")
        self._check_active(now, actions)
        return RecoveryReport(before, self._state, tuple(actions))

    def _check_active(self, now: datetime, actions: list[str]) -> None:
        s = self._state
        if s.active is None:
            return
        why = self.check_slot(s.active)
        if why is None:
            return
        log.error("active model failed its integrity check: %s", why)
        actions.append(f"active corrupt ({why}); {self.fall_back(why, now, lost=True)}")

    def fall_back(self, reason: str, now: datetime, *, lost: bool = False) -> str:
        """The active slot cannot serve (corrupt, or fails to load): serve the previous
        slot if it is intact and was not rolled back for cause, else no slot (the agent's
        bundled model). Clears the slot left; returns what was done. `lost`: its files
        failed the start-up check, so its committed version may be installed again from
        the same signed target (`SlotsState.lost_version`)."""
        s = self._state
        if s.active is None:
            raise StateError("no active slot to fall back from")
        prev = s.previous
        if prev is not None and prev not in s.bad and self.check_slot(prev) is None:
            done = f"fell back to slot {prev.value}"
            self._save(fall_back(s, reason, now, lost=lost))
        else:
            done = "no verified slot left"
            if prev is not None and prev in s.bad:
                done = f"no verified slot left (slot {prev.value}: {s.bad[prev]})"
            self._save(drop_active(s, reason, now, lost=lost))
        self._clear(s.active)
        return done
