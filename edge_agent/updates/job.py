"""What the updater's steps share: one verified target on its way (`Job`), the two ways
a step ends early (`StoppedError`, `RefusedError`), and the attempt limit. Used by
`edge_agent.updates.updater` (announcements, install) and
`edge_agent.updates.directed` (the TUF channel)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from edge_agent.updates.record import TargetId

if TYPE_CHECKING:
    from ota.announce import Announcement
    from ota.fetch import Fetcher
    from ota.verify import VerifiedManifest

__all__ = ["MAX_ATTEMPTS", "Job", "RefusedError", "StoppedError", "utc"]

MAX_ATTEMPTS = 3  # interrupted tries of one target (crash, stop) before it is given up


class StoppedError(Exception):
    """The agent is stopping: leave the update where a restart can recover it."""


class RefusedError(Exception):
    """A step refuses the target: `state` to publish ("rejected", "failed", "idle",
    "ignored"), why, and the figures measured."""

    def __init__(self, state: str, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.state, self.reason, self.figures = state, reason, figures or {}


@dataclass(frozen=True)
class Job:
    """One verified target on its way: what the download and install steps share.
    From the channel, `ann`, `payload` and `fetcher` are empty (ngclient fetches)."""

    ann: Announcement | None
    payload: bytes
    vm: VerifiedManifest | None
    tid: TargetId
    fetcher: Fetcher | None
    limit: int  # bytes: bounded by signed metadata
    installed: int  # the anti-rollback floor when the update began
    failures: int  # failed downloads of this target so far


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)
