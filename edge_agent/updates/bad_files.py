"""Announced files that cannot become a bundle, so fetching them again cannot help.

An announcement's URL, size and sha256 are an unsigned wrapper around a signed manifest.
When the server delivered exactly the bytes the wrapper named (their size and sha256 are
the announced ones) and those bytes are not a usable bundle of the verified target
(malformed, or failing a content check against its signed manifest), another fetch of the
same URL for the same sha256 can only bring the same bytes: the announcement is not
retried, and the same wrapper, announced again (a retained message after a reconnect), is
not fetched again. Bytes that differ from the announced ones (a cut transfer, another file
on the server, a hash mismatch) stay a transient download failure.

This memory never blocks a signed target: it is keyed by the verified target's identity
AND the exact (URL, sha256) wrapper, so any other announcement of the same target (another
URL or sha256) is processed normally, and the same URL and sha256 around another signed
manifest are not skipped (a junk wrapper cannot poison the operator's real file). It is
bounded (`BAD_FILES_KEPT`, oldest forgotten first) and kept in memory only: after a
restart a remembered wrapper is fetched once more.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fsutil import sha256_file
from ota.announce import Announcement
from ota.errors import OtaError

__all__ = ["BAD_FILES_KEPT", "BadFiles", "MalformedAsAnnouncedError", "Wrapper", "delivered"]

BAD_FILES_KEPT = 16  # wrappers remembered; a flood of them only costs re-fetches


class MalformedAsAnnouncedError(Exception):
    """The file is byte for byte the announced one and is refused (`error`): not transient.
    Control flow inside the updater only; the refusal itself is `error`."""

    def __init__(self, error: OtaError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Wrapper:
    """One announcement's unsigned wrapper around one verified target."""

    target: str  # TargetId.key: sha256 of the verified manifest bytes
    url: str
    sha256: str

    @classmethod
    def of(cls, target: str, ann: Announcement) -> Wrapper:
        return cls(target, ann.url, ann.sha256)


def delivered(path: Path, ann: Announcement) -> bool:
    """The downloaded file is exactly what the announcement named (size and sha256)."""
    try:
        return path.stat().st_size == ann.size and sha256_file(path) == ann.sha256
    except OSError:  # gone or unreadable: nothing is known about it
        return False


class BadFiles:
    """Bounded memory of wrappers whose exact bytes were refused (updater thread only)."""

    def __init__(self, kept: int = BAD_FILES_KEPT) -> None:
        self._kept = kept
        self._why: OrderedDict[Wrapper, str] = OrderedDict()

    def add(self, w: Wrapper, why: str) -> None:
        self._why[w] = why
        self._why.move_to_end(w)
        while len(self._why) > self._kept:
            self._why.popitem(last=False)

    def reason(self, w: Wrapper) -> str | None:
        return self._why.get(w)
