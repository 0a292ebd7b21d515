"""Bundle files: build, read the signed header, add signatures.

A bundle is one uncompressed tar (docs/adr/0001-bundle-format.md):
  1. `manifest.json`   canonical manifest bytes (what is signed)
  2. `signatures.json` JSON list of {keyid, sig}
  3. `payload/<path>`  one regular file per manifest entry, in manifest order
Reading never trusts the tar: sizes are capped before anything is read, and payload is
only read by ota.unpack against a VerifiedManifest.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fsutil import fsync_dir
from ota.canonical import parse_json
from ota.errors import BundleFormatError, OtaError, SizeLimitError
from ota.manifest import MAX_MANIFEST_BYTES, Manifest
from ota.signing import Signature, signatures_from_list, signatures_to_list

__all__ = [
    "MANIFEST_MEMBER",
    "MAX_BUNDLE_BYTES",
    "PAYLOAD_PREFIX",
    "SIGNATURES_MEMBER",
    "BundleHeader",
    "add_signatures",
    "bundle_size_bound",
    "open_bundle_tar",
    "read_header",
    "write_bundle",
]

MANIFEST_MEMBER = "manifest.json"
SIGNATURES_MEMBER = "signatures.json"
PAYLOAD_PREFIX = "payload/"
MAX_BUNDLE_BYTES = 512 * 1024 * 1024  # far above any edge model; bounds disk and time
MAX_SIGNATURES_BYTES = 64 * 1024
_CHUNK = 64 * 1024


_BLOCK = 512
_MEMBER_OVERHEAD = 4 * _BLOCK  # a header block plus room for a PAX header (long names)
_TAR_END = 20 * _BLOCK  # two zero blocks, padded to tarfile's 10240-byte record


def _blocks(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def bundle_size_bound(manifest_len: int, file_sizes: Sequence[int]) -> int:
    """The most bytes a well-formed bundle of this signed manifest can take: a download
    limit that comes from signed facts, not from an unsigned announcement."""
    members = [manifest_len, MAX_SIGNATURES_BYTES, *file_sizes]
    return sum(_MEMBER_OVERHEAD + _blocks(n) for n in members) + _TAR_END


@dataclass(frozen=True)
class BundleHeader:
    """The signed part of a bundle, not yet verified."""

    manifest_bytes: bytes
    signatures: tuple[Signature, ...]

    @property
    def manifest(self) -> Manifest:
        """Parsed but NOT verified: for display only (inspect); use ota.verify to trust it."""
        return Manifest.from_bytes(self.manifest_bytes)


@contextmanager
def open_bundle_tar(path: Path, max_size: int = MAX_BUNDLE_BYTES) -> Iterator[tarfile.TarFile]:
    """Open a bundle as a tar stream, translating foreign errors into BundleFormatError."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BundleFormatError(f"{path}: cannot read bundle: {e.strerror or e}") from e
    if size > max_size:
        raise SizeLimitError(f"{path}: bundle is {size} bytes, limit is {max_size}")
    try:
        with tarfile.open(path, mode="r:") as tf:
            yield tf
    except OtaError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, OverflowError, RecursionError) as e:
        # tarfile lets plain ValueError out of junk PAX records (e.g. GNU.sparse.size=abc)
        raise BundleFormatError(f"{path}: not a readable bundle (tar): {e}") from e


def read_member_bounded(tf: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isreg():
        raise BundleFormatError(f"bundle member {member.name!r} must be a regular file")
    if member.size > limit:
        raise SizeLimitError(f"bundle member {member.name!r} is {member.size} bytes, limit {limit}")
    f = tf.extractfile(member)
    if f is None:
        raise BundleFormatError(f"bundle member {member.name!r} has no data")
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SizeLimitError(f"bundle member {member.name!r} exceeds {limit} bytes")
    return data


def read_header(path: Path) -> BundleHeader:
    """Read manifest.json and signatures.json, which must be the first two members."""
    with open_bundle_tar(path) as tf:
        first, second = tf.next(), tf.next()
        if first is None or first.name != MANIFEST_MEMBER:
            raise BundleFormatError(f"{path}: first member must be {MANIFEST_MEMBER}")
        manifest_bytes = read_member_bounded(tf, first, MAX_MANIFEST_BYTES)
        if second is None or second.name != SIGNATURES_MEMBER:
            raise BundleFormatError(f"{path}: second member must be {SIGNATURES_MEMBER}")
        raw = read_member_bounded(tf, second, MAX_SIGNATURES_BYTES)
    sig_list = parse_json(raw, f"{path}: {SIGNATURES_MEMBER}")
    return BundleHeader(manifest_bytes, signatures_from_list(sig_list, SIGNATURES_MEMBER))


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_atomically(dest: Path, fill: Callable[[tarfile.TarFile], None]) -> None:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
                fill(tf)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def _sigs_bytes(sigs: Sequence[Signature]) -> bytes:
    return json.dumps(signatures_to_list(sigs), indent=1).encode() + b"\n"


def write_bundle(
    dest: Path,
    manifest: Manifest,
    sources: dict[str, Path],
    signatures: Sequence[Signature] = (),
) -> None:
    """Write a bundle; `sources` maps each manifest path to the file holding its bytes.

    The tar is reproducible: member order, owners and mtimes (= manifest.created) are fixed.
    """
    mtime = int(manifest.created.timestamp())
    manifest_bytes = manifest.canonical_bytes()

    def fill(tf: tarfile.TarFile) -> None:
        tf.addfile(_info(MANIFEST_MEMBER, len(manifest_bytes), mtime), io.BytesIO(manifest_bytes))
        sb = _sigs_bytes(signatures)
        tf.addfile(_info(SIGNATURES_MEMBER, len(sb), mtime), io.BytesIO(sb))
        for entry in manifest.files:
            src = Path(sources[entry.path])
            with src.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != entry.size:
                    raise BundleFormatError(
                        f"{src}: is {size} bytes but the manifest says {entry.size}"
                    )
                tf.addfile(_info(PAYLOAD_PREFIX + entry.path, size, mtime), f)

    _write_atomically(dest, fill)


def add_signatures(path: Path, new: Sequence[Signature]) -> tuple[Signature, ...]:
    """Rewrite the bundle with `new` signatures added (a key's older signature replaced)."""
    header = read_header(path)
    header.manifest  # noqa: B018 - refuse to sign something that is not a manifest
    new_ids = {s.keyid for s in new}
    sigs = (*(s for s in header.signatures if s.keyid not in new_ids), *new)
    sb = _sigs_bytes(sigs)

    def fill(out: tarfile.TarFile) -> None:
        with open_bundle_tar(path) as tf:
            for member in tf:
                if member.name == SIGNATURES_MEMBER:
                    info = _info(SIGNATURES_MEMBER, len(sb), int(member.mtime))
                    out.addfile(info, io.BytesIO(sb))
                elif member.isreg():
                    out.addfile(member, tf.extractfile(member))
                else:
                    out.addfile(member)

    _write_atomically(path, fill)
    return sigs
