"""Safe unpacking of a verified bundle: only listed regular files, sizes enforced while
reading, every sha256 checked, into a staging dir renamed into place only on success.

Refused: absolute paths, `..`, links, devices, directories, duplicates, unlisted members,
a manifest that differs from the verified one, more bytes than declared, a wrong hash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
from pathlib import Path
from typing import IO

from edge_agent.fsutil import fsync_dir
from ota.bundle import (
    MANIFEST_MEMBER,
    MAX_BUNDLE_BYTES,
    PAYLOAD_PREFIX,
    SIGNATURES_MEMBER,
    open_bundle_tar,
    read_member_bounded,
)
from ota.errors import (
    BundleFormatError,
    HashMismatchError,
    SignatureError,
    SizeLimitError,
    UnsafePathError,
)
from ota.manifest import MAX_FILES, MAX_MANIFEST_BYTES, FileEntry
from ota.paths import check_relative_path
from ota.verify import VerifiedManifest

__all__ = ["check_payload", "unpack"]

log = logging.getLogger(__name__)
_CHUNK = 64 * 1024


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.isdir():
        return "directory"
    if m.ischr() or m.isblk():
        return "device"
    if m.isfifo():
        return "fifo"
    return "non-regular member"


def _copy_checked(src: IO[bytes], entry: FileEntry, out: IO[bytes] | None) -> None:
    """Copy at most entry.size bytes, fail on any byte beyond it, then compare sha256."""
    h = hashlib.sha256()
    left = entry.size
    while left > 0:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            raise HashMismatchError(
                f"{entry.path}: truncated, {left} of {entry.size} bytes missing"
            )
        left -= len(chunk)
        h.update(chunk)
        if out is not None:
            out.write(chunk)
    if src.read(1):
        raise SizeLimitError(f"{entry.path}: more data than the declared {entry.size} bytes")
    if h.hexdigest() != entry.sha256:
        raise HashMismatchError(
            f"{entry.path}: sha256 {h.hexdigest()[:12]}... does not match the signed "
            f"{entry.sha256[:12]}...: the payload was altered or corrupted"
        )


def _payload_entry(
    member: tarfile.TarInfo, verified: VerifiedManifest, seen: set[str]
) -> FileEntry:
    """Decide whether a non-metadata member may be read, and against which entry."""
    name = member.name
    check_relative_path(name, f"bundle member {name!r}")
    if not member.isreg():
        raise UnsafePathError(
            f"bundle member {name!r} is a {_kind(member)}; only regular files are allowed"
        )
    if not name.startswith(PAYLOAD_PREFIX):
        raise BundleFormatError(f"bundle member {name!r} is outside {PAYLOAD_PREFIX}")
    rel = name[len(PAYLOAD_PREFIX) :]
    entry = verified.manifest.file(rel)
    if entry is None:
        raise BundleFormatError(f"bundle member {name!r} is not listed in the manifest")
    if rel in seen:
        raise BundleFormatError(f"bundle member {name!r} appears twice")
    seen.add(rel)
    if member.size > entry.size:
        raise SizeLimitError(
            f"{rel}: archive holds {member.size} bytes, the manifest declares {entry.size}"
        )
    return entry


def _check_metadata(
    tf: tarfile.TarFile, member: tarfile.TarInfo, index: int, verified: VerifiedManifest
) -> bool:
    """True if `member` is the leading manifest/signatures pair (manifest checked)."""
    if index == 1 or member.name == MANIFEST_MEMBER:
        if index != 1 or member.name != MANIFEST_MEMBER:
            raise BundleFormatError(f"{MANIFEST_MEMBER} must be the first member, once")
        if read_member_bounded(tf, member, MAX_MANIFEST_BYTES) != verified.manifest_bytes:
            raise SignatureError("the bundle's manifest differs from the verified one (swapped?)")
        return True
    return index == 2 and member.name == SIGNATURES_MEMBER


def _write_checked(src: IO[bytes], entry: FileEntry, staging: Path) -> None:
    dest = staging / entry.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL|O_NOFOLLOW: never write through anything that already sits at that name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(dest, flags, 0o644), "wb") as out:
        _copy_checked(src, entry, out)
        out.flush()
        os.fsync(out.fileno())


def _walk(bundle: Path, verified: VerifiedManifest, staging: Path | None) -> None:
    seen: set[str] = set()
    with open_bundle_tar(bundle, MAX_BUNDLE_BYTES) as tf:
        for index, member in enumerate(tf, start=1):
            if index > MAX_FILES + 2:
                raise BundleFormatError(f"{bundle}: more members than a manifest may list")
            if _check_metadata(tf, member, index, verified):
                continue
            entry = _payload_entry(member, verified, seen)
            src = tf.extractfile(member)
            if src is None:
                raise BundleFormatError(f"bundle member {member.name!r} has no data")
            with src:
                if staging is None:
                    _copy_checked(src, entry, None)
                else:
                    _write_checked(src, entry, staging)
    missing = [f.path for f in verified.manifest.files if f.path not in seen]
    if missing:
        raise BundleFormatError(f"{bundle}: payload missing {', '.join(missing)}")


def check_payload(bundle: Path, verified: VerifiedManifest) -> None:
    """Check every payload file's size and hash without writing anything."""
    _walk(Path(bundle), verified, None)


def unpack(bundle: Path, verified: VerifiedManifest, target: Path) -> None:
    """Unpack into `target` (which must not exist); on any error nothing is left behind."""
    target = Path(target)
    if target.exists():
        raise BundleFormatError(f"{target}: exists; unpack needs a fresh directory")
    staging = target.with_name(f".{target.name}.unpacking")
    if staging.exists():
        shutil.rmtree(staging)  # leftover from a crash: it never held a verified payload
    staging.mkdir(parents=True)
    try:
        _walk(Path(bundle), verified, staging)
        for d in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: -len(p.parts)):
            fsync_dir(d)
        os.replace(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("unpacked %s v%s into %s", verified.manifest.name, verified.manifest.version, target)
