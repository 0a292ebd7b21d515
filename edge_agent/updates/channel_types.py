"""The update channel's plain values: its configuration and a directed target (no
python-tuf here), so the agent's long-running process can hold and act on them while
the channel's trust work runs in a short-lived child (`edge_agent.updates.trust_worker`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edge_agent.updates.seal import TufEvidence

from ota.fetch import FetchLimits

__all__ = ["Channel", "ChannelConfig", "DirectedTarget"]


@dataclass(frozen=True)
class ChannelConfig:
    """Where the repositories are, which roots bootstrap trust, and who this device is."""

    image_url: str  # base URL: <url>/metadata/ and <url>/targets/
    director_url: str
    image_root: Path  # the installed trusted root of each repository (1.root.json or later)
    director_root: Path
    group: str
    device: str
    limits: FetchLimits = field(default_factory=FetchLimits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_url": self.image_url,
            "director_url": self.director_url,
            "image_root": str(self.image_root),
            "director_root": str(self.director_root),
            "group": self.group,
            "device": self.device,
            "limits": [self.limits.min_rate_bps, self.limits.rate_window_s, self.limits.base_s],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelConfig:
        rate, window, base = (float(x) for x in d["limits"])
        return cls(
            image_url=str(d["image_url"]),
            director_url=str(d["director_url"]),
            image_root=Path(d["image_root"]),
            director_root=Path(d["director_root"]),
            group=str(d["group"]),
            device=str(d["device"]),
            limits=FetchLimits(min_rate_bps=rate, rate_window_s=window, base_s=base),
        )


@dataclass(frozen=True)
class DirectedTarget:
    """A target both repositories name with the same length and hashes."""

    path: str
    length: int
    hashes: dict[str, str]
    name: str
    family: str
    version: int
    # python-tuf's TargetFile where ngclient runs in this process; None in the agent,
    # whose child process downloads by path, length and hashes
    info: Any = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        return self.hashes["sha256"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "length": self.length,
            "hashes": dict(self.hashes),
            "name": self.name,
            "family": self.family,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DirectedTarget:
        hashes = d["hashes"]
        if not isinstance(hashes, dict) or "sha256" not in hashes:
            raise ValueError("directed target without a sha256")
        return cls(
            path=str(d["path"]),
            length=int(d["length"]),
            hashes={str(k): str(v) for k, v in hashes.items()},
            name=str(d["name"]),
            family=str(d["family"]),
            version=int(d["version"]),
        )


class Channel(Protocol):
    """What the updater needs of a channel: `UpdateChannel` (ngclient in this process)
    or `IsolatedChannel` (ngclient in a trust worker)."""

    cfg: ChannelConfig
    root_versions: dict[str, int]

    def refresh(self, cancel: threading.Event | None = None) -> list[DirectedTarget]: ...

    def download(
        self, target: DirectedTarget, dest: Path, cancel: threading.Event | None = None
    ) -> Path: ...

    def evidence(self, target: DirectedTarget) -> TufEvidence: ...
