"""Which names may appear in a bundle: relative POSIX paths that stay inside the target."""

from __future__ import annotations

from ota.errors import UnsafePathError

__all__ = ["MAX_PATH_LENGTH", "check_relative_path"]

MAX_PATH_LENGTH = 255


def check_relative_path(path: str, what: str) -> str:
    """Return `path` if it is a plain relative path; else UnsafePathError saying why."""
    if not path or len(path) > MAX_PATH_LENGTH:
        raise UnsafePathError(f"{what}: path must be 1..{MAX_PATH_LENGTH} characters")
    if "\x00" in path or "\\" in path:
        raise UnsafePathError(f"{what}: {path!r} contains a NUL or backslash")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafePathError(f"{what}: {path!r} is absolute")
    parts = path.split("/")
    if ".." in parts:
        raise UnsafePathError(f"{what}: {path!r} climbs out of the bundle with '..'")
    if any(p in ("", ".") for p in parts):
        raise UnsafePathError(f"{what}: {path!r} has empty or '.' components (not normalised)")
    return path
