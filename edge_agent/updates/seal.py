"""A slot's seal: what ties its unpacked files to *signed* metadata, re-checked at start.

The manifest copy beside a slot (`slots/<x>.manifest.json`) is only a file on disk: a
slot whose model file and manifest copy were both changed would pass a check against it.
So when a verified bundle is unpacked, `write_seal` keeps the signed evidence it came
with in `slots/<x>.seal.json`:

- `signatures`: the bundle's own signatures over the manifest bytes (announced bundles);
  at start the manifest copy must be signed by a threshold of the device's root
  (`ota.root_file`), and the files must match it.
- `tuf`: the image repository's targets metadata as ngclient verified it at install
  (signed by a threshold of the image targets keys), the target's path and the version
  of the image root it was verified under, plus the bundle's *layout*
  (`slots/<x>.layout`: the tar's bytes with the payload data cut out, zlib). At start
  the bundle is put together again from the layout and the slot's files; its length and
  sha256 must be the ones the targets metadata, signed by the targets keys of that
  root, gives for that path.

Why that root and not the newest: the device verified the record under the root it
trusted when it installed the slot; a later rotation revokes keys for metadata verified
from then on (new installs), not for what was verified before (TUF and Uptane judge an
image when it is installed). What the start-up check guards against is a slot changed
on disk since. So the record is checked under the root the seal names -- the trusted
root, or an older one from the device's root history, linked to the trusted root by the
chain (`trusted_root.linked_root`) -- or under the trusted root itself (nothing is
trusted more; seals written before the root was recorded, and a root the history lost,
are checked under it alone); a record that verifies under neither fails.

A slot passes if any evidence verifies against a trust anchor this device has. Expiry is
not judged here (a committed model keeps serving after its bundle or timestamp expired);
signatures and keys are. With no anchor configured (no root file, no channel) there is
nothing signed to check against: `SealTrust.anchored` is False and the caller says so.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.fsutil import atomic_write_bytes, atomic_write_json, read_json
from ota.errors import OtaError

if TYPE_CHECKING:  # signatures (cryptography) and tar: only when installing or checking
    from ota.signing import Signature

__all__ = ["SealTrust", "TufEvidence", "check_seal", "clear_seal", "write_seal"]

SEAL_VERSION = 1
MAX_LAYOUT_BYTES = 4 * 1024 * 1024  # tar headers of a bundle; far above any real one
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class TufEvidence:
    """A channel target: the image repository's targets metadata (exact bytes, as
    verified by ngclient), the target's path in it, and the version of the image root
    ngclient verified it under."""

    targets_json: bytes
    path: str
    root_version: int


@dataclass(frozen=True)
class SealTrust:
    """The device's trust anchors for re-checking slots (paths; read when checking)."""

    root_file: Path | None = None  # ota.root_file: bundle signatures
    image_root_file: Path | None = None  # ota.image_root_file (installed image root)
    image_meta_dir: Path | None = None  # <state_dir>/ota/tuf/image (rotated root, if any)
    # check in a trust worker (the agent: no python-tuf or cryptography resident)
    isolated: bool = False

    @property
    def anchored(self) -> bool:
        return self.root_file is not None or self.image_root_file is not None


def _seal_path(slots_dir: Path, slot: str) -> Path:
    return slots_dir / f"{slot}.seal.json"


def _layout_path(slots_dir: Path, slot: str) -> Path:
    return slots_dir / f"{slot}.layout"


def clear_seal(slots_dir: Path, slot: str) -> None:
    _seal_path(slots_dir, slot).unlink(missing_ok=True)
    _layout_path(slots_dir, slot).unlink(missing_ok=True)


def _layout(bundle: Path) -> tuple[bytes, list[list[Any]], list[int]]:
    """The bundle without its payload data: (skeleton, holes [[offset, path, size]] in
    skeleton offsets, [offset, length] of the manifest member's data)."""
    from ota.bundle import MANIFEST_MEMBER, PAYLOAD_PREFIX, open_bundle_tar

    regions: list[tuple[int, int, str]] = []  # (offset in bundle, size, payload path)
    manifest_at: tuple[int, int] | None = None
    with open_bundle_tar(bundle) as tf:
        for m in tf:
            if m.name == MANIFEST_MEMBER:
                manifest_at = (m.offset_data, m.size)
            elif m.isreg() and m.name.startswith(PAYLOAD_PREFIX):
                regions.append((m.offset_data, m.size, m.name[len(PAYLOAD_PREFIX) :]))
    if manifest_at is None:
        raise OtaError(f"{bundle}: no {MANIFEST_MEMBER}")
    skeleton, holes = bytearray(), []
    with bundle.open("rb") as f:
        pos = 0
        for off, size, rel in regions:
            skeleton += f.read(off - pos)
            holes.append([len(skeleton), rel, size])
            f.seek(off + size)
            pos = off + size
        skeleton += f.read()
    return bytes(skeleton), holes, [manifest_at[0], manifest_at[1]]


def write_seal(
    slots_dir: Path,
    slot: str,
    bundle: Path,
    signatures: Sequence[Signature],
    tuf: TufEvidence | None = None,
) -> None:
    """Keep the signed evidence of a verified bundle unpacked into `slot`. Raises OSError
    or OtaError (the caller treats the install as failed)."""
    from ota.signing import signatures_to_list

    seal: dict[str, Any] = {"v": SEAL_VERSION, "signatures": signatures_to_list(signatures)}
    if tuf is not None:
        skeleton, holes, manifest_at = _layout(bundle)
        atomic_write_bytes(_layout_path(slots_dir, slot), zlib.compress(skeleton, 6))
        seal["tuf"] = {
            "path": tuf.path,
            "root": tuf.root_version,
            "targets": base64.b64encode(tuf.targets_json).decode(),
            "holes": holes,
            "manifest": manifest_at,
        }
    atomic_write_json(_seal_path(slots_dir, slot), seal)


# --- checking ----------------------------------------------------------------------------


def check_seal(
    slots_dir: Path, slot: str, slot_dir: Path, manifest_bytes: bytes, trust: SealTrust
) -> str | None:
    """None if the slot's manifest copy and files are vouched for by signed evidence
    that verifies against one of `trust`'s anchors; else why not (for status). The
    caller has checked the files against the manifest copy already. With
    `trust.isolated` the check runs in a trust worker (edge_agent.updates.trust_worker)."""
    if trust.isolated:
        from edge_agent.updates.trust_worker import check_seal_isolated

        return check_seal_isolated(slots_dir, slot, slot_dir, manifest_bytes, trust)
    return _check_seal_here(slots_dir, slot, slot_dir, manifest_bytes, trust)


def _check_seal_here(
    slots_dir: Path, slot: str, slot_dir: Path, manifest_bytes: bytes, trust: SealTrust
) -> str | None:
    try:
        raw = read_json(_seal_path(slots_dir, slot))
    except (OSError, ValueError):
        return f"slot {slot}: no signed record (seal) to re-check it against"
    if not isinstance(raw, dict) or raw.get("v") != SEAL_VERSION:
        return f"slot {slot}: its signed record (seal) is unreadable"
    reasons: list[str] = []
    if trust.root_file is not None and raw.get("signatures"):
        why = _check_signatures(raw["signatures"], manifest_bytes, trust.root_file)
        if why is None:
            return None
        reasons.append(why)
    tuf = raw.get("tuf")
    if trust.image_root_file is not None and isinstance(tuf, dict):
        why = _check_tuf(
            tuf, slots_dir=slots_dir, slot=slot, slot_dir=slot_dir,
            manifest_bytes=manifest_bytes, trust=trust,
        )  # fmt: skip
        if why is None:
            return None
        reasons.append(why)
    if not reasons:
        return f"slot {slot}: none of its signed evidence is for a trust root this device has"
    return f"slot {slot}: " + "; ".join(reasons)


def _check_signatures(sig_list: object, manifest_bytes: bytes, root_file: Path) -> str | None:
    from ota.root import SignedRoot
    from ota.signing import check_threshold, signatures_from_list

    try:
        doc = SignedRoot.from_bytes(root_file.read_bytes())
        root = doc.root
        check_threshold(root.signed_bytes(), doc.signatures, root.keys, root.threshold, "root")
        sigs = signatures_from_list(sig_list, "seal signatures")
        check_threshold(manifest_bytes, sigs, root.keys, root.threshold, "manifest")
    except OSError as e:
        return f"trusted root unreadable: {e.strerror or e}"
    except OtaError as e:
        return f"manifest not signed by the trusted root ({type(e).__name__}: {e})"
    return None


def _check_tuf(
    tuf: dict[str, Any],
    *,
    slots_dir: Path,
    slot: str,
    slot_dir: Path,
    manifest_bytes: bytes,
    trust: SealTrust,
) -> str | None:
    try:
        length, sha256 = _signed_target(tuf, trust)
        skeleton = zlib.decompressobj().decompress(
            _layout_path(slots_dir, slot).read_bytes(), MAX_LAYOUT_BYTES
        )
        got_len, got_sha = _reassemble(skeleton, tuf, slot_dir, manifest_bytes)
    except _SealError as e:
        return str(e)
    except (OSError, ValueError, TypeError, KeyError, IndexError, zlib.error) as e:
        return f"signed target record unusable ({type(e).__name__}: {e})"
    if (got_len, got_sha) != (length, sha256):
        return (
            f"files do not match the signed target {tuf.get('path')} (the image repository "
            "signed another length or sha256): changed on disk"
        )
    return None


class _SealError(Exception):
    pass


def _image_roots(trust: SealTrust, sealed: object) -> tuple[list[Any], list[str]]:
    """The image roots a slot's targets record may verify under, and why the root its
    seal names (`sealed`) is not among them, if so: that root, when it is older than the
    trusted one and still linked to it in the device's root history
    (`trusted_root.linked_root`), then the trusted root itself (nothing is trusted more;
    a seal naming no root, or one that cannot be found, is checked under it alone).
    The trusted root is chosen as the channel chooses it (`trusted_root.choose_root`):
    the persisted one (after any rotation) unless the installed one is newer. A damaged
    one that cannot be replaced without forgetting a rotation fails the check, saying
    which file and the fix: an older root would accept keys revoked since."""
    from tuf.api.metadata import Metadata

    from edge_agent.updates.trusted_root import choose_root, linked_root

    assert trust.image_root_file is not None
    if trust.image_meta_dir is None:
        data = trust.image_root_file.read_bytes()
    else:
        try:
            data = choose_root(
                "image", trust.image_meta_dir, trust.image_root_file, "ota.image_root_file"
            ).data
        except OtaError as e:
            raise _SealError(str(e)) from e
    trusted: Metadata[Any] = Metadata.from_bytes(data)
    current = trusted.signed.version
    if sealed is None or sealed == current:
        return [trusted], []
    if type(sealed) is not int:
        return [trusted], ["its seal names no valid image root version"]
    head = f"sealed under image root v{sealed}"
    if sealed > current:
        return [trusted], [
            f"{head}, newer than the trusted root v{current} (the image trust store was "
            "reset since; a refresh walks the chain to it again)"
        ]
    if trust.image_meta_dir is None:
        return [trusted], [f"{head}, older than the trusted root v{current}: no root history"]
    try:
        older = Metadata.from_bytes(linked_root(trust.image_meta_dir, data, sealed))
    except ValueError as e:
        return [trusted], [f"{head}, not linked to the trusted root v{current}: {e}"]
    return [older, trusted], []


def _signed_target(tuf: dict[str, Any], trust: SealTrust) -> tuple[int, str]:
    """(length, sha256) of the target, from targets metadata signed by a threshold of
    the strict targets keys of one of `_image_roots`."""
    from tuf.api import exceptions as tuf_errors
    from tuf.api.metadata import Metadata, Targets

    try:
        md: Metadata[Any] = Metadata.from_bytes(base64.b64decode(tuf["targets"]))
    except tuf_errors.RepositoryError as e:
        raise _SealError(f"image metadata refused ({e})") from e
    if not isinstance(md.signed, Targets):
        raise _SealError("the stored targets record is not targets metadata")
    roots, reasons = _image_roots(trust, tuf.get("root"))
    for root_md in roots:
        if (why := _signed_under(root_md, md)) is None:
            break
        reasons.insert(0, why)
    else:
        raise _SealError("; ".join(reasons))
    info = md.signed.targets.get(str(tuf["path"]))
    if info is None or "sha256" not in info.hashes:
        raise _SealError(f"the signed targets do not list {tuf['path']} with a sha256")
    return int(info.length), str(info.hashes["sha256"])


def _signed_under(root_md: Any, md: Any) -> str | None:
    """None if `md` is signed by a threshold of `root_md`'s targets keys, all of them
    strict keys, with strict signatures; else why not."""
    from tuf.api import exceptions as tuf_errors

    from ota.ed25519 import key_problem, signature_problem

    root = root_md.signed
    try:
        root.verify_delegate("root", root_md.signed_bytes, root_md.signatures)
        for keyid in root.roles["targets"].keyids:
            raw_key = bytes.fromhex(str(root.keys[keyid].keyval.get("public", "")))
            if (why := key_problem(raw_key)) is not None:
                return f"image targets key {keyid[:12]}... of root v{root.version} is {why}"
        for keyid, sig in md.signatures.items():
            if (why := signature_problem(bytes.fromhex(sig.signature))) is not None:
                return f"targets signature by {keyid[:12]}... {why}"
        root.verify_delegate("targets", md.signed_bytes, md.signatures)
    except tuf_errors.UnsignedMetadataError as e:
        return f"targets record not signed by the image targets keys of root v{root.version} ({e})"
    except tuf_errors.RepositoryError as e:
        return f"image metadata refused ({e})"
    return None


def _reassemble(
    skeleton: bytes, tuf: dict[str, Any], slot_dir: Path, manifest_bytes: bytes
) -> tuple[int, str]:
    """Length and sha256 of the bundle put together from the layout and the slot's
    files. The layout's paths must be exactly the manifest's files, once each."""
    from ota.manifest import Manifest

    m_off, m_len = (int(x) for x in tuf["manifest"])
    if skeleton[m_off : m_off + m_len] != manifest_bytes:
        raise _SealError("the manifest copy differs from the one in the signed bundle")
    wanted = {f.path: f.size for f in Manifest.from_bytes(manifest_bytes).files}
    holes = [(int(off), str(rel), int(size)) for off, rel, size in tuf["holes"]]
    if sorted(rel for _, rel, _ in holes) != sorted(wanted):
        raise _SealError("the layout does not list exactly the manifest's files")
    h, pos, total = hashlib.sha256(), 0, len(skeleton)
    for off, rel, size in holes:
        if not pos <= off <= len(skeleton):
            raise _SealError("the layout is out of order")
        h.update(skeleton[pos:off])
        pos = off
        total += size
        fd = os.open(slot_dir / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            left = size
            while left > 0 and (chunk := f.read(min(_CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
            if left or f.read(1):
                raise _SealError(f"{rel} has the wrong size")
    h.update(skeleton[pos:])
    return total, h.hexdigest()
