"""The bundle manifest: a typed, frozen model that round-trips exactly through JSON.

`from_dict(d).to_dict() == d` for every valid `d`, including fields this version does
not know (kept in `unrecognized`), so an older tool never drops what a newer one signed.
What is signed is `canonical_bytes(to_dict())`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ota.canonical import canonical_bytes, format_time, parse_json_object, parse_time
from ota.errors import BundleFormatError
from ota.paths import check_relative_path

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST_TYPE",
    "MAX_FILES",
    "MAX_MANIFEST_BYTES",
    "FileEntry",
    "Manifest",
    "parse_agent_version",
]

MANIFEST_TYPE = "bundle-manifest"
BUNDLE_FORMAT = 1
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_FILES = 256
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_AGENT_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")
_FILE_KNOWN = frozenset({"path", "size", "sha256"})
_KNOWN = frozenset(
    {
        "_type",
        "format",
        "name",
        "family",
        "version",
        "label",
        "files",
        "profiles",
        "min_agent_version",
        "created",
        "expires",
        "allow_downgrade",
    }
)


def parse_agent_version(text: str, what: str = "agent version") -> tuple[int, ...]:
    if not _AGENT_VERSION.match(text):
        raise BundleFormatError(f"{what}: {text!r} is not like 1.2.3")
    return tuple(int(p) for p in text.split("."))


def _req(d: Mapping[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in d:
        raise BundleFormatError(f"{where}: missing {key!r}")
    v = d[key]
    # bool is an int subclass; a signed `true` must never be read as version 1.
    if type(v) is not typ:
        raise BundleFormatError(f"{where}.{key}: expected {typ.__name__}, got {type(v).__name__}")
    return v


@dataclass(frozen=True)
class FileEntry:
    """One payload file: where it goes (relative path), its exact size and sha256."""

    path: str
    size: int
    sha256: str
    unrecognized: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: object, where: str) -> FileEntry:
        if not isinstance(d, dict):
            raise BundleFormatError(f"{where}: expected an object")
        path = check_relative_path(_req(d, "path", str, where), f"{where}.path")
        size = _req(d, "size", int, where)
        sha = _req(d, "sha256", str, where)
        if size < 0:
            raise BundleFormatError(f"{where}.size: must be >= 0")
        if not _SHA256.match(sha):
            raise BundleFormatError(f"{where}.sha256: expected 64 lowercase hex digits")
        return cls(path, size, sha, {k: v for k, v in d.items() if k not in _FILE_KNOWN})

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, **self.unrecognized}


@dataclass(frozen=True)
class Manifest:
    """What a bundle contains and for whom; every field is covered by the signatures."""

    name: str
    family: str
    version: int
    label: str
    files: tuple[FileEntry, ...]
    profiles: tuple[str, ...]
    min_agent_version: str
    created: datetime
    expires: datetime
    allow_downgrade: bool | None = None  # signed operator override of anti-rollback
    format: int = BUNDLE_FORMAT
    unrecognized: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version < 0:
            raise BundleFormatError("manifest.version must be >= 0")
        if not self.files or len(self.files) > MAX_FILES:
            raise BundleFormatError(f"manifest.files: 1..{MAX_FILES} entries required")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise BundleFormatError("manifest.files: duplicate path")
        if not self.profiles:
            raise BundleFormatError("manifest.profiles: at least one target profile required")
        parse_agent_version(self.min_agent_version, "manifest.min_agent_version")

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        w = "manifest"
        if d.get("_type") != MANIFEST_TYPE:
            raise BundleFormatError(f"{w}: _type must be {MANIFEST_TYPE!r}")
        fmt = _req(d, "format", int, w)
        if fmt != BUNDLE_FORMAT:
            raise BundleFormatError(
                f"{w}.format: {fmt} not supported (this agent reads {BUNDLE_FORMAT})"
            )
        files = _req(d, "files", list, w)
        profiles = _req(d, "profiles", list, w)
        if not all(isinstance(p, str) for p in profiles):
            raise BundleFormatError(f"{w}.profiles: expected strings")
        allow = d.get("allow_downgrade")
        if allow is not None and type(allow) is not bool:
            raise BundleFormatError(f"{w}.allow_downgrade: expected true or false")
        return cls(
            name=_req(d, "name", str, w),
            family=_req(d, "family", str, w),
            version=_req(d, "version", int, w),
            label=_req(d, "label", str, w),
            files=tuple(FileEntry.from_dict(f, f"{w}.files[{i}]") for i, f in enumerate(files)),
            profiles=tuple(profiles),
            min_agent_version=_req(d, "min_agent_version", str, w),
            created=parse_time(d.get("created"), f"{w}.created"),
            expires=parse_time(d.get("expires"), f"{w}.expires"),
            allow_downgrade=allow,
            format=fmt,
            unrecognized={k: v for k, v in d.items() if k not in _KNOWN},
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise BundleFormatError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        return cls.from_dict(parse_json_object(data, "manifest"))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "_type": MANIFEST_TYPE,
            "format": self.format,
            "name": self.name,
            "family": self.family,
            "version": self.version,
            "label": self.label,
            "files": [f.to_dict() for f in self.files],
            "profiles": list(self.profiles),
            "min_agent_version": self.min_agent_version,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
        }
        if self.allow_downgrade is not None:
            d["allow_downgrade"] = self.allow_downgrade
        d.update(self.unrecognized)
        return d

    def canonical_bytes(self) -> bytes:
        """The exact bytes that signatures cover."""
        return canonical_bytes(self.to_dict())
