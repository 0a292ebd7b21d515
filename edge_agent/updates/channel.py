"""The device's update channel: two TUF repositories read with python-tuf's ngclient.

`UpdateChannel.refresh()` refreshes the **image** and the **director** repository (root
chain walk for rotation, timestamp freshness, snapshot consistency, size limits: all
ngclient), then returns the targets the director names for this device or its group --
only those the image repository lists with the same length and hashes.
`download()` fetches one through ngclient (length and hashes enforced while streaming,
our deadline and minimum rate on top).

Trusted metadata is persisted per repository under `<state_dir>/ota/tuf/<repo>/`
(`root.json` is the trusted root after any rotation; `root_history/N.root.json`). The
installed root files only bootstrap a device, or replace the persisted root when they
are newer (an agent upgrade shipping a rotated root); a damaged persisted root is a
local `TrustStoreError` unless it can be replaced without forgetting a rotation
(`edge_agent.updates.trusted_root`). Every key of a trusted root is
checked strictly (`ota.ed25519`): a root listing a key that would accept forged
signatures is refused. python-tuf's errors become our specific OtaErrors here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.ngclient import Updater as NgUpdater

from edge_agent.updates.channel_types import ChannelConfig, DirectedTarget
from edge_agent.updates.seal import TufEvidence
from edge_agent.updates.trusted_root import choose_root
from ota.ed25519 import key_problem
from ota.errors import (
    ChannelStaleError,
    DownloadError,
    HashMismatchError,
    NotDirectedError,
    OtaError,
    RollbackError,
    SignatureError,
    SizeLimitError,
    TargetMismatchError,
    ThresholdError,
    TransferTooSlowError,
)
from ota.tuf_fetcher import BoundedFetcher

__all__ = ["ChannelConfig", "DirectedTarget", "UpdateChannel"]

log = logging.getLogger(__name__)

REPOS = ("image", "director")


def _edge(tf: TargetFile) -> dict[str, Any]:
    custom = tf.unrecognized_fields.get("custom")
    edge = custom.get("edge") if isinstance(custom, dict) else None
    return edge if isinstance(edge, dict) else {}


def _names(edge: dict[str, Any], key: str) -> list[str]:
    """A director entry's `groups` or `devices`: a list of names, else none (a plain
    string must not match by substring: "line-10" is not group "line-1")."""
    names = edge.get(key)
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


@contextmanager
def _translated(repo: str, meta_dir: Path, up: NgUpdater | None = None) -> Iterator[None]:
    """python-tuf's exceptions -> our specific OtaErrors, naming the repository."""
    try:
        yield
    except OtaError:
        raise
    except tuf_errors.ExpiredMetadataError as e:
        raise ChannelStaleError(
            f"update channel stale since {_stale_since(meta_dir, up)} ({repo} repository: {e})"
        ) from e
    except tuf_errors.BadVersionNumberError as e:
        raise RollbackError(f"{repo} repository: metadata rolled back or mixed: {e}") from e
    except tuf_errors.UnsignedMetadataError as e:
        cls = SignatureError if " by 0/" in str(e) else ThresholdError
        raise cls(f"{repo} repository: {e}") from e
    except tuf_errors.LengthOrHashMismatchError as e:
        raise HashMismatchError(f"{repo} repository: {e}") from e
    except tuf_errors.DownloadLengthMismatchError as e:
        raise SizeLimitError(f"{repo} repository: {e}") from e
    except tuf_errors.SlowRetrievalError as e:
        raise TransferTooSlowError(f"{repo} repository: {e}") from e
    except tuf_errors.DownloadError as e:
        raise DownloadError(f"{repo} repository: {e}") from e
    except tuf_errors.RepositoryError as e:
        raise SignatureError(f"{repo} repository: metadata refused: {e}") from e
    except (OSError, ValueError) as e:
        raise DownloadError(f"{repo} repository: {type(e).__name__}: {e}") from e


def _stale_since(meta_dir: Path, up: NgUpdater | None) -> str:
    """When the metadata that expired did: the expired timestamp ngclient loaded (it is
    kept in memory, not persisted), else the trusted root's or the persisted one's."""
    trusted = getattr(up, "_trusted_set", None)  # ngclient internals: best effort
    for role in ("timestamp", "root"):
        try:
            signed = getattr(trusted, role)
        except (AttributeError, KeyError):
            continue
        if signed is not None and signed.is_expired():
            return str(signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
    try:
        md: Metadata[Any] = Metadata.from_file(str(meta_dir / "timestamp.json"))
    except Exception:  # noqa: BLE001 - only for the message
        return "an unknown time"
    return str(md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _check_keys(repo: str, meta_dir: Path) -> int:
    """Every key of the trusted root must be a strict Ed25519 key; returns its version."""
    md: Metadata[Any] = Metadata.from_file(str(meta_dir / "root.json"))
    root = md.signed
    assert isinstance(root, Root)
    for keyid, key in root.keys.items():
        raw = bytes.fromhex(str(key.keyval.get("public", "")))
        why = "not an ed25519 key" if key.keytype != "ed25519" else key_problem(raw)
        if why is not None:
            raise SignatureError(
                f"{repo} repository: trusted root v{root.version} lists key {keyid[:12]}..., "
                f"which is {why}: refusing this channel"
            )
    return root.version


class UpdateChannel:
    def __init__(self, cfg: ChannelConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.dir = Path(state_dir) / "ota" / "tuf"
        self._image: NgUpdater | None = None
        self.root_versions: dict[str, int] = {}
        self._cancel: threading.Event | None = None  # the running refresh's

    def _meta_dir(self, repo: str) -> Path:
        return self.dir / repo

    def _updater(self, repo: str) -> NgUpdater:
        url = self.cfg.image_url if repo == "image" else self.cfg.director_url
        installed = self.cfg.image_root if repo == "image" else self.cfg.director_root
        meta = self._meta_dir(repo)
        meta.mkdir(parents=True, exist_ok=True)
        # A damaged stored root is local damage (TrustStoreError naming the file and
        # the fix), re-seeded only where no rotation can be forgotten: trusted_root.
        chosen = choose_root(repo, meta, installed, f"ota.{repo}_root_file")
        # None: the persisted (maybe rotated) root stays trusted, as ngclient stored it
        bootstrap = None if chosen.persisted else chosen.data
        base = url.rstrip("/")
        with _translated(repo, meta):
            return NgUpdater(
                metadata_dir=str(meta),
                metadata_base_url=f"{base}/metadata/",
                target_base_url=f"{base}/targets/",
                fetcher=BoundedFetcher(self.cfg.limits, cancel=self._cancel),
                bootstrap=bootstrap,
            )

    def _refreshed(self, repo: str) -> NgUpdater:
        up = self._updater(repo)
        meta = self._meta_dir(repo)
        with _translated(repo, meta, up):
            up.refresh()
            self.root_versions[repo] = _check_keys(repo, meta)
        return up

    def refresh(self, cancel: threading.Event | None = None) -> list[DirectedTarget]:
        """Refresh both repositories; the targets directed to this device or its group
        (one per model name), each checked against the image repository. Raises the
        specific OtaError of the first check that fails, NotDirectedError if none;
        `cancel` set ends a transfer at its next chunk (DownloadError)."""
        self._cancel = cancel
        try:
            image = self._refreshed("image")
            self._refreshed("director")
        finally:
            self._cancel = None
        with _translated("director", self._meta_dir("director")):
            dtargets = self._director_targets()
        mine: dict[str, TargetFile] = {}
        for tf in dtargets.targets.values():
            edge = _edge(tf)
            for_me = self.cfg.device in _names(edge, "devices")
            if not for_me and self.cfg.group not in _names(edge, "groups"):
                continue
            name = str(edge.get("name", ""))
            if name in mine and not for_me:
                continue  # a device-specific direction wins over the group's
            mine[name] = tf
        if not mine:
            raise NotDirectedError(
                f"the director names no target for device {self.cfg.device!r} or group "
                f"{self.cfg.group!r}"
            )
        out = []
        with _translated("image", self._meta_dir("image")):
            for tf in mine.values():
                out.append(self._match(image, tf))
        self._image = image
        return out

    def _director_targets(self) -> Targets:
        """The director's top-level targets, as ngclient verified and cached them in
        refresh() (consistent with its verified snapshot)."""
        md: Metadata[Any] = Metadata.from_file(str(self._meta_dir("director") / "targets.json"))
        assert isinstance(md.signed, Targets)
        return md.signed

    @staticmethod
    def _match(image: NgUpdater, directed: TargetFile) -> DirectedTarget:
        info = image.get_targetinfo(directed.path)
        if info is None:
            raise TargetMismatchError(
                f"the director names {directed.path}, which the image repository does not list"
            )
        if info.length != directed.length or info.hashes != directed.hashes:
            raise TargetMismatchError(
                f"the director's {directed.path} differs from the image repository's "
                f"(length {directed.length} vs {info.length}, or hashes)"
            )
        if "sha256" not in info.hashes:
            raise TargetMismatchError(f"{directed.path}: no sha256 in the image repository")
        edge = _edge(info)
        version = edge.get("version")
        if type(version) is not int:
            raise TargetMismatchError(f"{directed.path}: the image entry carries no version")
        return DirectedTarget(
            path=info.path,
            length=info.length,
            hashes=dict(info.hashes),
            name=str(edge.get("name", "")),
            family=str(edge.get("family", "")),
            version=version,
            info=info,
        )

    def evidence(self, target: DirectedTarget) -> TufEvidence:
        """The signed record a slot filled from `target` keeps (re-checked at every start):
        the image repository's targets metadata ngclient verified in refresh(), and the
        version of the image root it verified it under (the seal is checked under that
        root, so a later rotation does not unmake the slot: `edge_agent.updates.seal`)."""
        root_version = self.root_versions.get("image")
        if root_version is None:
            raise DownloadError("image repository: refresh the channel before installing")
        try:
            data = (self._meta_dir("image") / "targets.json").read_bytes()
        except OSError as e:
            raise DownloadError(f"image repository: targets metadata unreadable: {e}") from e
        return TufEvidence(targets_json=data, path=target.path, root_version=root_version)

    def download(
        self, target: DirectedTarget, dest: Path, cancel: threading.Event | None = None
    ) -> Path:
        """Fetch `target` from the image repository into `dest` (length and hashes
        enforced while streaming; partial files never left at `dest`). `cancel` is not
        watched: ngclient's fetcher ends on its own deadline and minimum rate."""
        if self._image is None:
            raise DownloadError("refresh the channel before downloading")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with _translated("image", self._meta_dir("image")):
            try:
                self._image.download_target(target.info, str(tmp))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        tmp.replace(dest)
        return dest
