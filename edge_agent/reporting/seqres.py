"""The seq reservation file (`<state_dir>/outbox.seq`): numbers reserved before use.

The file holds one integer, `upto`: every seq below it may have been issued. It is
written (temp file, fsync, rename, fsync dir) before any number of a new block is used,
so whatever happens to the database (lost, corrupt, its WAL's tail gone in a power cut
under sync = "normal"), start-up can resume past every number that may have gone out.
A failure to write it is kept as `problem` (shown in status) and retried by the caller;
it never raises into an append.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from edge_agent.fsutil import atomic_write_bytes

__all__ = ["SEQ_BLOCK", "SeqReservation"]

log = logging.getLogger(__name__)

# Numbers are reserved this many at a time: a crash skips at most this many.
SEQ_BLOCK = 1000


class SeqReservation:
    """`upto` is durable on disk once `reserve`/`keep` returned without a problem."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.upto = 0
        self.problem = ""
        self._lock = threading.Lock()

    def read(self) -> tuple[int | None, bool]:
        """(the reserved bound, whether the file was garbled); None when missing or
        unreadable (logged)."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
            return int(text), False
        except FileNotFoundError:
            return None, False
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.error(
                "%s: unreadable seq reservation (%s); resuming a block past the outbox's own "
                "counter so no seq is reused",
                self.path,
                e,
            )
            return None, True

    def reserve(self, upto: int) -> None:
        """Durably reserve every seq below `upto` (never lowers it). Raises OSError."""
        with self._lock:
            if upto <= self.upto:
                return
            atomic_write_bytes(self.path, f"{upto}\n".encode())
            self.upto = upto

    def keep(self, upto: int) -> None:
        """`reserve`, but a failure is logged once, kept in `problem`, and left to a retry."""
        try:
            self.reserve(upto)
        except OSError as e:
            problem = f"cannot reserve seq numbers in {self.path}: {e}"
            if problem != self.problem:
                log.error("outbox: %s; retrying", problem)
            self.problem = problem
            return
        if self.problem:
            log.warning("outbox: seq reservation in %s works again", self.path)
        self.problem = ""

    def give_back(self, next_seq: int) -> None:
        """On a clean stop every issued number is below `next_seq`: shrink the reservation
        to it so the next start continues without a gap (best effort)."""
        with self._lock:
            try:
                atomic_write_bytes(self.path, f"{next_seq}\n".encode())
                self.upto = next_seq
            except OSError:
                log.debug("could not shrink the seq reservation on close", exc_info=True)
