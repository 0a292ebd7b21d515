"""Which root a device trusts for one TUF repository, from what is on its disk.

ngclient keeps the trusted root in `<state_dir>/ota/tuf/<repo>/`: `root_history/N.root.json`
for every root version it accepted and `root.json`, a link to the newest. The installed
root file (`ota.image_root_file` / `ota.director_root_file`) bootstraps a new device and
replaces the persisted root when it is newer (an agent upgrade shipping a rotated root).

When the persisted root is damaged (a power cut, a full disk, an edit), this is local
damage, and never reported as a refusal by the server. The device then trusts, in order:
1. its own copy of the newest root it accepted (`root_history/N.root.json`, N the highest
   there), if that copy is intact: nothing is lost;
2. the installed root file, if it is root vN or later: it is as new as anything this
   device trusted, so no rotation is forgotten;
3. nothing: `TrustStoreError`, naming the file and the fix. Starting again from an older
   installed root would forget the rotations since -- and the keys they revoked: a
   thief of a revoked key could then sign a root chain the device would walk.
If the history is gone too, which root the device last trusted is unknown: refused.

Every candidate must be root metadata signed by a threshold of its own keys. python-tuf
is imported lazily (the seal check at start uses this too).

`linked_root` gives an older root from the history, for the start-up check of a slot
installed under it (`edge_agent.updates.seal`): a rotation revokes keys for metadata
verified from then on, not what the device verified before it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ota.errors import TrustStoreError

__all__ = ["TrustedRoot", "choose_root", "linked_root"]

log = logging.getLogger(__name__)

_HISTORY = re.compile(r"^([0-9]{1,9})\.root\.json$")


@dataclass(frozen=True)
class TrustedRoot:
    """The root to start from: its bytes, its version, and whether it is the persisted
    one (ngclient is then given no bootstrap and reads it from its directory)."""

    data: bytes
    version: int
    persisted: bool


def _parse(data: bytes) -> int:
    """The version of self-signed root metadata; ValueError saying why not."""
    from tuf.api import exceptions as tuf_errors
    from tuf.api.metadata import Metadata, Root

    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
        if not isinstance(md.signed, Root):
            raise ValueError(f"not root metadata but {md.signed.type}")
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
    except tuf_errors.UnsignedMetadataError as e:
        raise ValueError(f"not signed by a threshold of its own keys: {e}") from e
    except tuf_errors.RepositoryError as e:  # DeserializationError among them
        raise ValueError(f"{e} ({len(data)} bytes)") from e
    return int(md.signed.version)


def linked_root(meta: Path, trusted: bytes, version: int) -> bytes:
    """Root v`version`, older than the `trusted` root (bytes), from this device's history
    (`root_history/N.root.json`: the roots ngclient accepted on its walks), checked to be
    still a link of the chain that ends at the trusted root: from v`version` on, each
    root is signed by a threshold of its own root keys and of its predecessor's, as the
    walk required. ValueError naming the file or the link that fails."""
    from tuf.api import exceptions as tuf_errors
    from tuf.api.metadata import Metadata

    newer: Metadata[Any] = Metadata.from_bytes(trusted)
    if not 1 <= version < newer.signed.version:
        raise ValueError(f"no root v{version} before the trusted root v{newer.signed.version}")
    data = trusted
    for v in range(newer.signed.version - 1, version - 1, -1):
        path = meta / "root_history" / f"{v}.root.json"
        try:
            data, got = _read(path)  # root metadata signed by its own keys
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        if got != v:
            raise ValueError(f"{path} holds root v{got}")
        older: Metadata[Any] = Metadata.from_bytes(data)
        try:
            older.signed.verify_delegate("root", newer.signed_bytes, newer.signatures)
        except tuf_errors.UnsignedMetadataError as e:
            raise ValueError(
                f"root v{v + 1} is not signed by a threshold of root v{v}'s keys ({path}): {e}"
            ) from e
        newer = older
    return data


def _read(path: Path) -> tuple[bytes, int]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from e
    return data, _parse(data)


def newest_accepted(meta: Path) -> int | None:
    """The highest N of `root_history/N.root.json`: the newest root ngclient accepted."""
    try:
        names = [p.name for p in (meta / "root_history").iterdir()]
    except OSError:
        return None
    versions = [int(m.group(1)) for n in names if (m := _HISTORY.match(n))]
    return max(versions, default=None)


def choose_root(repo: str, meta: Path, installed: Path, config_key: str) -> TrustedRoot:
    """The root `repo`'s client starts from (see the module doc); TrustStoreError when
    no root can be trusted safely."""
    try:
        boot: tuple[bytes, int] | None = _read(installed)
        boot_why = ""
    except ValueError as e:
        boot, boot_why = None, str(e)
    boot_v = -1 if boot is None else boot[1]

    def installed_root() -> TrustedRoot:
        if boot is None:
            raise TrustStoreError(
                f"{repo} repository: the installed root file {installed} ({config_key}) "
                f"is unreadable: {boot_why}; install the repository's root there again"
            )
        return TrustedRoot(boot[0], boot[1], persisted=False)

    stored = meta / "root.json"
    known = newest_accepted(meta)
    if not stored.exists() and not stored.is_symlink() and known is None:
        return installed_root()  # a new device: bootstrap
    try:
        data, version = _read(stored)
    except ValueError as e:
        why = str(e)
    else:
        if boot_v > version:  # a newer root installed with the agent replaces it
            return installed_root()
        return TrustedRoot(data, version, persisted=True)
    # The stored root is damaged: local damage, never the server's refusal.
    if known is not None:
        copy = meta / "root_history" / f"{known}.root.json"
        try:
            data, version = _read(copy)
        except ValueError:
            pass
        else:
            if version == known and version >= boot_v:
                log.warning("OTA: %s: %s unreadable (%s); using %s", repo, stored, why, copy)
                return TrustedRoot(data, version, persisted=False)
        if boot_v >= known:
            log.warning(
                "OTA: %s: %s unreadable (%s); re-seeded from the installed root file %s "
                "(v%d, not older than v%d, the newest root this device accepted)",
                repo, stored, why, installed, boot_v, known,
            )  # fmt: skip
            return installed_root()
    shown = f"v{boot_v}" if boot is not None else f"unreadable too: {boot_why}"
    head = (
        f"{repo} repository: the trusted root stored at {stored} is unreadable ({why}); "
        "this is damage on this device, not a refusal by the server"
    )
    if known is None:
        raise TrustStoreError(
            f"{head}. Its history ({meta / 'root_history'}) is gone too, so which root "
            f"this device last trusted is unknown, and the installed root file "
            f"{installed} ({shown}, {config_key}) is not trusted in its place. Fix: "
            f"install the repository's current root as {config_key} and delete {meta}"
        )
    raise TrustStoreError(
        f"{head}. It is not re-seeded from the installed root file {installed} "
        f"({shown}, {config_key}): this device had accepted root v{known}, and starting "
        f"again from an older root would forget the keys revoked since. Fix: put the "
        f"repository's root v{known} back as {meta / 'root_history'}/{known}.root.json "
        f"(its metadata/{known}.root.json) and remove {stored}, or install root v{known} "
        f"or later as {config_key}: the device re-seeds from either"
    )
