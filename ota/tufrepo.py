"""TUF repositories for model bundles, built and signed with python-tuf's Metadata API.

Two repositories, as Uptane has them:
- the **image** repository lists every released bundle (`targets`), signed by offline
  keys with a threshold;
- the **director** repository, signed by one online key, says which of those targets
  each group (or device) runs now: a target entry whose `custom.edge.groups` /
  `custom.edge.devices` names it, with the image entry's length and hashes.

Each is plain static files (`metadata/` and `targets/`, consistent snapshots: versioned
`N.root.json`, `N.targets.json`, `N.snapshot.json`, and `timestamp.json`; target files
under `targets/<dir>/<sha256>.<name>`), served by any web server (`edge-ota serve`).
Roles: root (offline, threshold), targets (image: offline, threshold; director: the
online key), snapshot and timestamp (the online key). Every public key is checked
strictly (`ota.ed25519`) before it is written into a root.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edge_agent.fsutil import atomic_write_bytes
from ota.bundle import read_header
from ota.errors import BundleFormatError, OtaError, SignatureError, ThresholdError
from ota.keys import PrivateKey, PublicKey

__all__ = [
    "DEFAULT_EXPIRY",
    "RepoKeys",
    "Repository",
    "RepositoryError",
    "direct",
    "init_repository",
    "target_custom",
]

DEFAULT_EXPIRY: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}


# A model name becomes a path component of the target and of its file: one plain
# component only ("../x", "/x", "a/b" would write outside the repository).
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RepositoryError(OtaError):
    """A repository is missing, malformed, or cannot be changed as asked."""


@dataclass(frozen=True)
class RepoKeys:
    """Who may sign what: offline root keys and targets keys (each with a threshold),
    and the one online key for snapshot and timestamp."""

    root: Sequence[PublicKey]
    root_threshold: int
    targets: Sequence[PublicKey]
    targets_threshold: int
    online: PublicKey

    def check(self) -> None:
        for role, keys, thr in (
            ("root", self.root, self.root_threshold),
            ("targets", self.targets, self.targets_threshold),
        ):
            if not 1 <= thr <= len({k.raw for k in keys}):
                raise RepositoryError(
                    f"{role}: threshold {thr} cannot be reached with {len(keys)} distinct keys"
                )


def sslib_key(pub: PublicKey) -> SSlibKey:
    return SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(pub.raw))


def _signer(key: PrivateKey) -> CryptoSigner:
    return CryptoSigner(key.cryptography_key, sslib_key(key.public))


def target_custom(target: TargetFile) -> dict[str, Any]:
    """The `custom.edge` object of a target entry (empty when absent)."""
    custom = target.unrecognized_fields.get("custom")
    edge = custom.get("edge") if isinstance(custom, dict) else None
    return dict(edge) if isinstance(edge, dict) else {}


def _write(path: Path, md: Metadata[Any]) -> None:
    atomic_write_bytes(path, md.to_bytes(JSONSerializer(compact=False)))


def _sign(md: Metadata[Any], keys: Sequence[PrivateKey]) -> None:
    for k in keys:
        md.sign(_signer(k), append=True)


def _assign_roles(root: Root, keys: RepoKeys) -> None:
    """The key table of a root, for a new repository and for each rotation alike: offline
    root and targets keys with their thresholds, the one online key for snapshot and
    timestamp."""
    for role, pubs, thr in (
        ("root", keys.root, keys.root_threshold),
        ("targets", keys.targets, keys.targets_threshold),
        ("snapshot", [keys.online], 1),
        ("timestamp", [keys.online], 1),
    ):
        for pub in pubs:
            root.add_key(sslib_key(pub), role)
        root.roles[role].threshold = thr


def _check_signed(delegator: Metadata[Any], role: str, md: Metadata[Any]) -> None:
    """A threshold of `role`'s keys (as `delegator` defines them) signed `md`."""
    try:
        delegator.verify_delegate(role, md)
    except UnsignedMetadataError as e:
        valid = [s for s in md.signatures if s in delegator.signed.get_delegated_role(role).keyids]
        cls = ThresholdError if valid else SignatureError
        raise cls(f"{role}: not signed by a threshold of its keys ({e})") from e


def init_repository(
    path: Path,
    keys: RepoKeys,
    *,
    root_signers: Sequence[PrivateKey],
    targets_signers: Sequence[PrivateKey],
    online: PrivateKey,
    now: datetime,
    expiry: dict[str, timedelta] | None = None,
) -> None:
    """Create an empty repository in `path` (must not hold one yet)."""
    keys.check()
    path = Path(path)
    if (path / "metadata").exists():
        raise RepositoryError(f"{path}: already holds a repository")
    exp = {**DEFAULT_EXPIRY, **(expiry or {})}
    root = Root(expires=now + exp["root"], consistent_snapshot=True)
    _assign_roles(root, keys)
    md_root = Metadata(root)
    _sign(md_root, root_signers)
    _check_signed(md_root, "root", md_root)
    (path / "metadata").mkdir(parents=True)
    (path / "targets").mkdir(exist_ok=True)
    _write(path / "metadata" / "1.root.json", md_root)
    repo = Repository(path)
    targets = Metadata(Targets(version=1, expires=now))
    repo.publish_targets(targets, targets_signers, online, now, exp, bump=False)


class Repository:
    """An existing repository directory: read the current metadata, publish changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = self.path / "metadata"
        if not (self.meta / "1.root.json").is_file():
            raise RepositoryError(f"{self.path}: no repository here (metadata/1.root.json)")

    def _load(self, name: str, cls: type[Any]) -> Metadata[Any]:
        try:
            md: Metadata[Any] = Metadata.from_file(str(self.meta / name))
        except Exception as e:  # tuf raises several kinds; all mean malformed here
            raise RepositoryError(f"{self.meta / name}: unreadable metadata: {e}") from e
        if not isinstance(md.signed, cls):
            raise RepositoryError(f"{self.meta / name}: not {cls.type} metadata")
        return md

    def root_version(self) -> int:
        versions = [int(p.name.split(".")[0]) for p in self.meta.glob("*.root.json")]
        return max(versions)

    def root(self) -> Metadata[Root]:
        return self._load(f"{self.root_version()}.root.json", Root)

    def timestamp(self) -> Metadata[Timestamp] | None:
        if not (self.meta / "timestamp.json").exists():
            return None
        return self._load("timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot] | None:
        ts = self.timestamp()
        if ts is None:
            return None
        return self._load(f"{ts.signed.snapshot_meta.version}.snapshot.json", Snapshot)

    def targets(self) -> Metadata[Targets]:
        snap = self.snapshot()
        if snap is None:
            raise RepositoryError(f"{self.path}: no snapshot published yet")
        return self._load(f"{snap.signed.meta['targets.json'].version}.targets.json", Targets)

    # -- publishing ---------------------------------------------------------------------
    def publish_targets(
        self,
        targets: Metadata[Targets],
        signers: Sequence[PrivateKey],
        online: PrivateKey,
        now: datetime,
        expiry: dict[str, timedelta] | None = None,
        *,
        bump: bool = True,
    ) -> None:
        """Write `targets` as the next version, signed by `signers` (a threshold of the
        root's targets keys), then a new snapshot and timestamp signed by `online`."""
        exp = {**DEFAULT_EXPIRY, **(expiry or {})}
        root = self.root()
        t = targets.signed
        if bump:
            t.version += 1
        t.expires = now + exp["targets"]
        targets.signatures.clear()
        _sign(targets, signers)
        _check_signed(root, "targets", targets)
        _write(self.meta / f"{t.version}.targets.json", targets)
        old = self.snapshot()
        snap = Metadata(
            Snapshot(
                version=1 if old is None else old.signed.version + 1,
                expires=now + exp["snapshot"],
                meta={"targets.json": MetaFile(version=t.version)},
            )
        )
        _sign(snap, [online])
        _check_signed(root, "snapshot", snap)
        _write(self.meta / f"{snap.signed.version}.snapshot.json", snap)
        self._publish_timestamp(snap.signed.version, online, now, exp)

    def _publish_timestamp(
        self, snapshot_version: int, online: PrivateKey, now: datetime, exp: dict[str, timedelta]
    ) -> None:
        old = self.timestamp()
        ts = Metadata(
            Timestamp(
                version=1 if old is None else old.signed.version + 1,
                expires=now + exp["timestamp"],
                snapshot_meta=MetaFile(version=snapshot_version),
            )
        )
        _sign(ts, [online])
        _check_signed(self.root(), "timestamp", ts)
        _write(self.meta / "timestamp.json", ts)

    def refresh_timestamp(
        self, online: PrivateKey, now: datetime, expiry: dict[str, timedelta] | None = None
    ) -> int:
        """A new timestamp for the same snapshot (run on a schedule: freshness)."""
        exp = {**DEFAULT_EXPIRY, **(expiry or {})}
        ts = self.timestamp()
        if ts is None:
            raise RepositoryError(f"{self.path}: nothing published yet")
        self._publish_timestamp(ts.signed.snapshot_meta.version, online, now, exp)
        new = self.timestamp()
        assert new is not None
        return new.signed.version

    def add_bundle(
        self, bundle: Path, signers: Sequence[PrivateKey], online: PrivateKey, now: datetime
    ) -> TargetFile:
        """Add a bundle file as a target `<name>/<name>-v<version>.bundle` (an image
        repository's release step); returns its entry."""
        header = read_header(bundle)
        try:
            m = header.manifest
        except BundleFormatError as e:
            raise RepositoryError(f"{bundle}: not a bundle: {e}") from e
        if not _TARGET_NAME.fullmatch(m.name):
            raise RepositoryError(
                f"{bundle}: model name {m.name!r} cannot name a target: it becomes a "
                "directory and file name in the repository, so it must be letters, digits, "
                "'.', '_' and '-', starting with a letter or digit; rename the model (card "
                "`name`) and build again"
            )
        rel = f"{m.name}/{m.name}-v{m.version}.bundle"
        tf = TargetFile.from_file(rel, str(bundle), ["sha256"])
        tf.unrecognized_fields["custom"] = {
            "edge": {"name": m.name, "family": m.family, "version": m.version}
        }
        targets = self.targets()
        if rel in targets.signed.targets:
            raise RepositoryError(f"{rel}: already released; a new release needs a new version")
        dest = self.path / "targets" / m.name / f"{tf.hashes['sha256']}.{Path(rel).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle, dest)
        targets.signed.targets[rel] = tf
        self.publish_targets(targets, signers, online, now)
        return tf

    def rotate_root(
        self,
        keys: RepoKeys,
        *,
        old_signers: Sequence[PrivateKey],
        new_signers: Sequence[PrivateKey],
        now: datetime,
        expiry: dict[str, timedelta] | None = None,
    ) -> int:
        """Root version + 1 with `keys` (keys left out are revoked), signed by a threshold
        of the old root's keys AND of the new one's. Returns the new version."""
        keys.check()
        exp = {**DEFAULT_EXPIRY, **(expiry or {})}
        old = self.root()
        new = Root(
            version=old.signed.version + 1,
            expires=now + exp["root"],
            consistent_snapshot=True,
        )
        _assign_roles(new, keys)
        md = Metadata(new)
        _sign(md, [*old_signers, *new_signers])
        _check_signed(old, "root", md)
        _check_signed(md, "root", md)
        _write(self.meta / f"{new.version}.root.json", md)
        return new.version

    def unsigned_under_root(self) -> list[str]:
        """The published roles (targets, snapshot, timestamp) that a threshold of the
        newest root's keys did not sign: after a rotation that replaced their keys, devices
        that walk to the new root refuse the repository until `resign` runs."""
        root = self.root()
        current: list[tuple[str, Metadata[Any] | None]] = [
            ("targets", self.targets()),
            ("snapshot", self.snapshot()),
            ("timestamp", self.timestamp()),
        ]
        out = []
        for role, md in current:
            if md is None:
                continue
            try:
                _check_signed(root, role, md)
            except OtaError:
                out.append(role)
        return out

    def resign(
        self,
        signers: Sequence[PrivateKey],
        online: PrivateKey,
        now: datetime,
        expiry: dict[str, timedelta] | None = None,
    ) -> int:
        """The same targets as a new version signed by `signers` (a threshold of the newest
        root's targets keys), then snapshot and timestamp by `online`: the step after a
        rotation that replaced the targets or online keys. Returns the targets version."""
        md = self.targets()
        self.publish_targets(md, signers, online, now, expiry)
        return int(md.signed.version)


def direct(
    director: Repository,
    image: Repository,
    target_path: str,
    online: PrivateKey,
    now: datetime,
    *,
    groups: Sequence[str] = (),
    devices: Sequence[str] = (),
) -> TargetFile:
    """Direct `groups`/`devices` to the image repository's `target_path`: they leave any
    other target of the same model name, and the director's entry carries the image
    entry's length and hashes. Signed by the director's online key."""
    if not groups and not devices:
        raise RepositoryError("direct whom? give a group or a device")
    img = image.targets().signed.targets.get(target_path)
    if img is None:
        raise RepositoryError(f"{target_path}: not in the image repository {image.path}")
    name = target_custom(img).get("name")
    md = director.targets()
    entries = md.signed.targets
    for path, tf in list(entries.items()):
        edge = target_custom(tf)
        if edge.get("name") != name or path == target_path:
            continue
        edge["groups"] = [g for g in edge.get("groups", []) if g not in groups]
        edge["devices"] = [d for d in edge.get("devices", []) if d not in devices]
        if edge["groups"] or edge["devices"]:
            tf.unrecognized_fields["custom"] = {"edge": edge}
        else:
            del entries[path]
    current = entries.get(target_path)
    edge = {**target_custom(img), "groups": [], "devices": []}
    if current is not None:
        edge["groups"] = list(target_custom(current).get("groups", []))
        edge["devices"] = list(target_custom(current).get("devices", []))
    edge["groups"] = sorted({*edge["groups"], *groups})
    edge["devices"] = sorted({*edge["devices"], *devices})
    tf = TargetFile(img.length, dict(img.hashes), target_path, {"custom": {"edge": edge}})
    entries[target_path] = tf
    director.publish_targets(md, [online], online, now)
    return tf
