"""OTA announcements: the retained MQTT message telling devices a bundle exists (pure).

The announcement carries the signed manifest and its signatures, so a device can refuse
a bundle (wrong profile, rollback, bad signature) before downloading a byte of it, plus
the bundle's URL, size (the download limit) and sha256.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ota.canonical import canonical_bytes, format_time, parse_json_object, parse_time
from ota.errors import BundleFormatError
from ota.signing import Signature, signatures_from_list, signatures_to_list

__all__ = [
    "ANNOUNCE_VERSION",
    "DEFAULT_PREFIX",
    "MAX_ANNOUNCEMENT_BYTES",
    "Announcement",
    "device_topic",
    "fleet_topic",
    "hint_body",
    "is_hint",
]

ANNOUNCE_VERSION = 1
DEFAULT_PREFIX = "edge"
MAX_ANNOUNCEMENT_BYTES = 1024 * 1024 + 64 * 1024
_SEGMENT = re.compile(r"^[^/+#\x00]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _segment(value: str, what: str) -> str:
    if not _SEGMENT.match(value):
        raise BundleFormatError(f"{what} {value!r}: must be non-empty without '/', '+', '#'")
    return value


def fleet_topic(group: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/fleet/{_segment(group, 'group')}/ota"


def device_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/{_segment(device, 'device')}/ota/announce"


@dataclass(frozen=True)
class Announcement:
    manifest: Mapping[str, Any]
    signatures: tuple[Signature, ...]
    url: str
    size: int
    sha256: str
    ts: datetime

    @property
    def manifest_bytes(self) -> bytes:
        """The bytes the signatures cover (the manifest is canonical JSON, so this is exact)."""
        return canonical_bytes(self.manifest)

    def to_payload(self) -> bytes:
        return canonical_bytes(
            {
                "v": ANNOUNCE_VERSION,
                "ts": format_time(self.ts),
                "manifest": dict(self.manifest),
                "signatures": signatures_to_list(self.signatures),
                "url": self.url,
                "size": self.size,
                "sha256": self.sha256,
            }
        )

    @classmethod
    def from_payload(cls, data: bytes) -> Announcement:
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise BundleFormatError(f"announcement larger than {MAX_ANNOUNCEMENT_BYTES} bytes")
        d = parse_json_object(data, "announcement")
        if d.get("v") != ANNOUNCE_VERSION:
            raise BundleFormatError(f"announcement: v must be {ANNOUNCE_VERSION}")
        manifest, url, size, sha = d.get("manifest"), d.get("url"), d.get("size"), d.get("sha256")
        if not isinstance(manifest, dict) or not isinstance(url, str):
            raise BundleFormatError("announcement: manifest (object) and url (string) required")
        if type(size) is not int or size <= 0:
            raise BundleFormatError("announcement: size must be a positive integer")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise BundleFormatError("announcement: sha256 must be 64 lowercase hex digits")
        return cls(
            manifest=manifest,
            signatures=signatures_from_list(d.get("signatures"), "announcement.signatures"),
            url=url,
            size=size,
            sha256=sha,
            ts=parse_time(d.get("ts"), "announcement.ts"),
        )


MAX_HINT_BYTES = 1024
HINT_VERSION = 1


def hint_body(ts: datetime) -> bytes:
    """The "refresh now" hint `is_hint` accepts, as `edge-ota hint` and a rollout send it."""
    return json.dumps({"v": HINT_VERSION, "hint": "refresh", "ts": ts.isoformat()}).encode()


def is_hint(data: bytes) -> bool:
    """True for a "refresh now" hint (`{"v": 1, "hint": "refresh", ...}`): it carries no
    trust, it only makes a device refresh its update channel sooner."""
    if len(data) > MAX_HINT_BYTES:
        return False
    try:
        d = parse_json_object(data, "hint")
    except BundleFormatError:
        return False
    return d.get("hint") == "refresh"
