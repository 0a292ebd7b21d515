"""Storage that fails the way real disks do, for tests (root only; they skip otherwise)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def ext4_fs(where: Path) -> Iterator[Path]:
    """A small loop-mounted ext4 (root and loop devices only; skips otherwise)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 to mount a filesystem that can be frozen")
    img = where.with_suffix(".img")
    with img.open("wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    where.mkdir()
    r = subprocess.run(
        ["mount", "-o", "loop", str(img), str(where)], check=False, capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["fsfreeze", "-u", str(where)], check=False, capture_output=True)
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@contextmanager
def small_fs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only; skips the test otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small filesystem for the state dir")
    where.mkdir(parents=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(path: Path, chunk: int = 65536) -> None:
    """Write zeros to the file `path` until its filesystem is full. Unbuffered: closing
    the file then has no failed chunk left to flush (a buffered file raised ENOSPC
    again from its close)."""
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * chunk)
        except OSError:
            pass
