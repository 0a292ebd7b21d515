"""Real image and director TUF repositories, built with `ota.tufrepo` (python-tuf's
Metadata API), served as static files by a real HTTP server, for device tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge_agent.updates.channel import ChannelConfig
from ota.fetch import FetchLimits
from ota.keys import PrivateKey
from ota.serve import BundleServer, start_dir_server
from ota.tufrepo import RepoKeys, Repository, direct, init_repository


@dataclass
class Repos:
    tmp: Path
    image_keys: list[PrivateKey]  # two root keys that are also the targets keys (threshold 2)
    image_online: PrivateKey
    director_root: PrivateKey
    director_online: PrivateKey
    image: Repository
    director: Repository
    image_server: BundleServer
    director_server: BundleServer

    @property
    def now(self) -> datetime:
        return datetime.now(timezone.utc).replace(microsecond=0)

    def release(self, bundle: Path, signers: Sequence[PrivateKey] | None = None) -> str:
        signers = self.image_keys if signers is None else signers
        return self.image.add_bundle(bundle, signers, self.image_online, self.now).path

    def direct(
        self, path: str, groups: Sequence[str] = ("line-1",), devices: Sequence[str] = ()
    ) -> None:
        direct(self.director, self.image, path, self.director_online, self.now,
               groups=groups, devices=devices)  # fmt: skip

    def channel(
        self, group: str = "line-1", device: str = "gw-01", limits: FetchLimits | None = None
    ) -> ChannelConfig:
        return ChannelConfig(
            image_url=self.image_server.url("").rstrip("/"),
            director_url=self.director_server.url("").rstrip("/"),
            image_root=self.image.meta / "1.root.json",
            director_root=self.director.meta / "1.root.json",
            group=group,
            device=device,
            limits=limits or FetchLimits(),
        )


@contextmanager
def make_repos(tmp: Path, expiry: dict[str, timedelta] | None = None) -> Iterator[Repos]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    a, b, online, droot, donline = (PrivateKey.generate() for _ in range(5))
    init_repository(
        tmp / "image", RepoKeys([a.public, b.public], 2, [a.public, b.public], 2, online.public),
        root_signers=[a, b], targets_signers=[a, b], online=online, now=now, expiry=expiry,
    )  # fmt: skip
    init_repository(
        tmp / "director", RepoKeys([droot.public], 1, [donline.public], 1, donline.public),
        root_signers=[droot], targets_signers=[donline], online=donline, now=now,
        expiry=expiry,
    )  # fmt: skip
    si, sd = start_dir_server(tmp / "image"), start_dir_server(tmp / "director")
    try:
        yield Repos(
            tmp, [a, b], online, droot, donline, Repository(tmp / "image"),
            Repository(tmp / "director"), si, sd,
        )  # fmt: skip
    finally:
        si.close()
        sd.close()
