"""The bounded in-memory spill: records that have a seq but are not in the outbox yet.

Pure bookkeeping, no I/O and no locks (the outbox holds its own lock around it). Records
wait here in seq order until the outbox's writer stores them; while the database cannot
be written (disk full, locked by another process, I/O error) they keep waiting here.
When the spill is over its record or byte bound, the oldest record of the first kind in
`drop_order` that has any is dropped (telemetry first, anomaly events last), and the
drop is counted per kind.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Held", "Spill"]


@dataclass(frozen=True)
class Held:
    """One record waiting to be stored. `size` is its accounted size in bytes."""

    seq: int
    kind: str
    topic: str
    payload: bytes
    retain: bool
    created: float
    size: int


class Spill:
    """A FIFO of `Held` records bounded by `max_records` and `max_bytes`."""

    def __init__(self, *, max_records: int, max_bytes: int, drop_order: Sequence[str]) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("a spill holds at least one record and one byte")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._order = tuple(drop_order)
        self._q: deque[Held] = deque()
        self._bytes = 0
        # The oldest `_pinned` records are being stored right now: never dropped or
        # superseded (when only pinned records are left the bound waits for them to go).
        self._pinned = 0
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._q)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, rec: Held, *, supersedes: str | None = None) -> list[Held]:
        """Queue `rec` behind everything held; return the records dropped to make room.

        `supersedes`: a kind whose held records `rec` replaces (a newer retained status);
        those are removed without counting as drops."""
        if supersedes is not None:
            self._remove(lambda h: h.kind == supersedes, skip=self._pinned)
        self._q.append(rec)
        self._bytes += rec.size
        dropped: list[Held] = []
        while len(self._q) > self.max_records or self._bytes > self.max_bytes:
            victim = self._oldest_to_drop()
            if victim is None:
                break
            self._q.remove(victim)
            self._bytes -= victim.size
            self.dropped[victim.kind] += 1
            dropped.append(victim)
        return dropped

    def take(self, limit: int) -> list[Held]:
        """The oldest `limit` records, still held (call `release` once they are stored)."""
        return [self._q[i] for i in range(min(limit, len(self._q)))]

    def pin(self, n: int) -> None:
        """Protect the oldest `n` records (being stored now) from drops; 0 unpins."""
        self._pinned = min(n, len(self._q))

    def release(self, stored: Iterable[Held]) -> None:
        """Forget records the outbox has stored (they are the oldest ones, in order)."""
        gone = {h.seq for h in stored}
        self._pinned = 0
        self._remove(lambda h: h.seq in gone)

    def count(self, kind: str) -> int:
        return sum(1 for h in self._q if h.kind == kind)

    def oldest_created(self) -> float | None:
        return self._q[0].created if self._q else None

    def _oldest_to_drop(self) -> Held | None:
        candidates = [self._q[i] for i in range(self._pinned, len(self._q))]
        for kind in self._order:
            for h in candidates:
                if h.kind == kind:
                    return h
        return candidates[0] if candidates else None

    def _remove(self, pred: Callable[[Held], bool], skip: int = 0) -> None:
        keep = deque(h for i, h in enumerate(self._q) if i < skip or not pred(h))
        self._bytes = sum(h.size for h in keep)
        self._q = keep
