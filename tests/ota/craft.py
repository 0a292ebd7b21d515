"""Hand-made hostile bundles: a real tar writer, so each attack is a real file."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

from ota.keys import PrivateKey
from ota.manifest import Manifest
from ota.signing import sign_bytes


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    return info, data


def craft(
    path: Path,
    manifest: Manifest,
    signers: Sequence[PrivateKey],
    payload: Sequence[tuple[tarfile.TarInfo, bytes]],
) -> Path:
    """Write manifest.json + signatures.json (valid signatures) + arbitrary members."""
    mb = manifest.canonical_bytes()
    sigs = json.dumps([sign_bytes(k, mb).to_dict() for k in signers]).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in [member("manifest.json", mb), member("signatures.json", sigs), *payload]:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def replace_member(bundle: Path, name: str, data: bytes) -> None:
    """Rewrite one member's bytes in place of the original, keeping everything else."""
    out = bundle.with_suffix(".tmp")
    with (
        tarfile.open(bundle, "r:") as src,
        tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for info in src:
            body = src.extractfile(info).read() if info.isreg() else b""
            if info.name == name:
                body = data
                info.size = len(data)
            dst.addfile(info, io.BytesIO(body))
    out.replace(bundle)


def hostile_copy(bundle: Path, out: Path, kind: str) -> Path:
    """A copy of a real signed bundle whose UNSIGNED parts are hostile, signed parts kept:
    `nested`: signatures.json is a list nested 30,000 deep (under its 64 KiB limit);
    `pax`: the payload members carry a junk PAX record (tarfile raises ValueError)."""
    with (
        tarfile.open(bundle, "r:") as src,
        tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for info in src:
            body = src.extractfile(info).read() if info.isreg() else b""
            if kind == "nested" and info.name == "signatures.json":
                body = b"[" * 30_000 + b"]" * 30_000
                info.size = len(body)
            if kind == "pax" and info.name.startswith("payload/"):
                info.pax_headers = {"GNU.sparse.size": "abc"}
            dst.addfile(info, io.BytesIO(body))
    return out
