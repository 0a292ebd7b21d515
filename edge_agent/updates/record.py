"""What the updater remembers between announcements and restarts, keyed by signed identity.

Nothing unsigned is bookkeeping: an entry is keyed by a `TargetId` (model name, version
and the sha256 of the exact signed manifest bytes, which list every payload file's size
and sha256), made only from a manifest that passed verification. So an unsigned wrapper
(URL, announced size or hash) can neither mark the operator's update as handled nor use
up its attempts. The record is bounded (`HANDLED_KEPT` outcomes, `ATTEMPTS_KEPT` counters)
and persisted atomically in `<state_dir>/ota/updates.json`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write_json, read_json

__all__ = ["ATTEMPTS_KEPT", "HANDLED_KEPT", "RECORD_FILE", "TargetId", "UpdateRecord"]

log = logging.getLogger(__name__)

RECORD_FILE = "updates.json"
RECORD_VERSION = 2  # v1 keyed entries on the unsigned bundle hash: dropped on load
HANDLED_KEPT = 50  # outcomes remembered (retained announcements come back after restarts)
ATTEMPTS_KEPT = 8  # interrupted-attempt counters (one per target being tried)


@dataclass(frozen=True)
class TargetId:
    """The signed identity of a target: what bookkeeping, retries and `.part` names use."""

    name: str
    version: int
    digest: str  # sha256 (hex) of the verified canonical manifest bytes

    @classmethod
    def of(cls, name: str, version: int, manifest_bytes: bytes) -> TargetId:
        return cls(name, version, hashlib.sha256(manifest_bytes).hexdigest())

    @property
    def key(self) -> str:
        return self.digest

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.digest[:12]})"


class UpdateRecord:
    """Outcomes and attempt counters of verified targets (one owner: the updater thread)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.handled: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = read_json(self.path)
        except (OSError, ValueError):
            return
        if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION:
            if raw is not None:
                log.info("OTA: %s from an older agent (unsigned keys): starting afresh", self.path)
            return
        handled, attempts = raw.get("handled"), raw.get("attempts")
        if isinstance(handled, list):
            self.handled = [
                h for h in handled if isinstance(h, dict) and isinstance(h.get("id"), str)
            ][-HANDLED_KEPT:]
        if isinstance(attempts, dict):
            self.attempts = {
                str(k): int(v) for k, v in attempts.items() if type(v) is int and v > 0
            }

    def save(self) -> None:
        atomic_write_json(
            self.path, {"v": RECORD_VERSION, "handled": self.handled, "attempts": self.attempts}
        )

    def outcome(self, tid: TargetId) -> str | None:
        """The recorded final result of `tid`, or None if it was never finished here."""
        for h in reversed(self.handled):
            if h.get("id") == tid.key:
                return str(h.get("result", ""))
        return None

    def committed(self, tid: TargetId) -> bool:
        """Whether `tid` (this exact signed target) was last committed here."""
        return (self.outcome(tid) or "").startswith("committed ")

    def finish(self, tid: TargetId, result: str, ts: float) -> None:
        """Record a final verdict on a verified target; its attempt counter goes."""
        kept = [h for h in self.handled if h.get("id") != tid.key]
        kept.append(
            {"id": tid.key, "name": tid.name, "version": tid.version, "result": result, "ts": ts}
        )
        self.handled = kept[-HANDLED_KEPT:]
        self.attempts.pop(tid.key, None)
        self.save()

    def begin_attempt(self, tid: TargetId) -> int:
        """Count one more interrupted-or-running attempt of `tid`; returns the count."""
        n = self.attempts.pop(tid.key, 0) + 1
        self.attempts[tid.key] = n  # re-inserted last: the oldest counters go first
        while len(self.attempts) > ATTEMPTS_KEPT:
            self.attempts.pop(next(iter(self.attempts)))
        self.save()
        return n

    def undo_attempt(self, tid: TargetId) -> None:
        """A failed download is no interrupted attempt: give the count back."""
        n = self.attempts.get(tid.key, 0)
        if n > 1:
            self.attempts[tid.key] = n - 1
        else:
            self.attempts.pop(tid.key, None)
        self.save()
