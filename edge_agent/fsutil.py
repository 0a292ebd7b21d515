"""Atomic persistence: write a temp file in the same dir, fsync, rename, fsync the dir.

A crash at any point leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_dir", "read_json"]


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """durable=False skips the fsyncs: still never torn (rename), but may roll back to the
    previous version on power loss. For files rewritten every second (status), where
    fsync would only wear out an SD card."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, *, mode: int = 0o644, durable: bool = True) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    atomic_write_bytes(path, data, mode=mode, durable=durable)


_LINED = json.JSONEncoder(sort_keys=True, allow_nan=False)


def lined_json(obj: dict[str, Any]) -> bytes:
    """`obj` as JSON with sorted keys, one top-level key per line and each item of a
    top-level list on a line of its own, every line written by the C encoder: json.dumps
    with `indent` runs the pure-Python one, which took 1.8 ms of the GIL each second for
    16 streams' status.json and 4.9 ms for 64 (0.34 and 1.2 ms this way). The file still
    reads line by line (less, grep, diff) and parses as any JSON. ValueError for NaN or
    infinity, as atomic_write_json."""
    if not all(isinstance(k, str) for k in obj):  # json.dumps' own key conversions
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    enc = _LINED.encode
    lines = []
    for key in sorted(obj):
        v = obj[key]
        if isinstance(v, list) and v:
            v_text = "[\n    " + ",\n    ".join(enc(x) for x in v) + "\n  ]"
        else:
            v_text = enc(v)
        lines.append(f"  {enc(key)}: {v_text}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode() if lines else b"{}\n"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 64 KiB chunks (models, bundles, slot files)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> Any:
    with Path(path).open("rb") as f:
        return json.load(f)
