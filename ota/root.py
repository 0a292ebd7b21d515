"""The root document: which keys are trusted to sign bundles, how many must, until when.

A device installs a root with the agent. A new root replaces it only if it is the next
version and is signed by a threshold of the OLD root's keys and a threshold of its own
(see docs/adr/0002-key-rotation.md). Everything here is pure: bytes and `now` in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ota.canonical import canonical_bytes, format_time, parse_json_object, parse_time
from ota.errors import (
    BundleFormatError,
    ExpiredError,
    RootRotationError,
    SignatureError,
    ThresholdError,
)
from ota.keys import PrivateKey, PublicKey
from ota.signing import (
    Signature,
    check_threshold,
    sign_bytes,
    signatures_from_list,
    signatures_to_list,
)

__all__ = [
    "MAX_ROOT_BYTES",
    "ROOT_TYPE",
    "Root",
    "SignedRoot",
    "trust_root",
    "verify_rotation",
]

ROOT_TYPE = "root"
MAX_ROOT_BYTES = 256 * 1024
_KNOWN = frozenset({"_type", "version", "expires", "threshold", "keys"})


@dataclass(frozen=True)
class Root:
    """The signed part of a root document. Unknown fields are kept for exact round-trips."""

    version: int
    expires: datetime
    threshold: int
    keys: Mapping[str, PublicKey]
    unrecognized: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version < 1:
            raise BundleFormatError("root.version must be >= 1")
        if not 1 <= self.threshold <= len(self.keys):
            raise BundleFormatError(
                f"root.threshold {self.threshold} must be between 1 and the number of keys "
                f"({len(self.keys)})"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Root:
        if d.get("_type") != ROOT_TYPE:
            raise BundleFormatError(f"root: _type must be {ROOT_TYPE!r}")
        version, threshold, keys_obj = d.get("version"), d.get("threshold"), d.get("keys")
        if type(version) is not int or type(threshold) is not int:
            raise BundleFormatError("root: version and threshold must be integers")
        if not isinstance(keys_obj, dict):
            raise BundleFormatError("root.keys: expected an object keyid -> key")
        keys: dict[str, PublicKey] = {}
        for keyid, kd in keys_obj.items():
            key = PublicKey.from_dict(kd, f"root.keys[{keyid[:12]}]")
            if key.keyid != keyid:
                raise BundleFormatError(f"root.keys: id {keyid[:12]}... is not sha256 of its key")
            keys[keyid] = key
        return cls(
            version=version,
            expires=parse_time(d.get("expires"), "root.expires"),
            threshold=threshold,
            keys=keys,
            unrecognized={k: v for k, v in d.items() if k not in _KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": ROOT_TYPE,
            "version": self.version,
            "expires": format_time(self.expires),
            "threshold": self.threshold,
            "keys": {kid: k.to_dict() for kid, k in self.keys.items()},
            **self.unrecognized,
        }

    def signed_bytes(self) -> bytes:
        return canonical_bytes(self.to_dict())

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expires


@dataclass(frozen=True)
class SignedRoot:
    """A root document as stored in a file: the signed part and its signatures."""

    root: Root
    signatures: tuple[Signature, ...] = ()

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedRoot:
        if len(data) > MAX_ROOT_BYTES:
            raise BundleFormatError(f"root document larger than {MAX_ROOT_BYTES} bytes")
        doc = parse_json_object(data, "root document")
        signed = doc.get("signed")
        if not isinstance(signed, dict):
            raise BundleFormatError("root document: missing 'signed' object")
        return cls(Root.from_dict(signed), signatures_from_list(doc.get("signatures"), "root"))

    def to_bytes(self) -> bytes:
        doc = {"signed": self.root.to_dict(), "signatures": signatures_to_list(self.signatures)}
        return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"

    def sign(self, key: PrivateKey) -> SignedRoot:
        """Add (or replace) this key's signature over the canonical signed bytes."""
        sig = sign_bytes(key, self.root.signed_bytes())
        others = tuple(s for s in self.signatures if s.keyid != sig.keyid)
        return replace(self, signatures=(*others, sig))


def trust_root(doc: SignedRoot, now: datetime) -> Root:
    """Accept an installed root: signed by a threshold of its own keys and not expired."""
    root = doc.root
    check_threshold(
        root.signed_bytes(), doc.signatures, root.keys, root.threshold, f"root v{root.version}"
    )
    if root.is_expired(now):
        raise ExpiredError(
            f"root v{root.version} expired at {format_time(root.expires)}; "
            "install a newer root (edge-ota root rotate)"
        )
    return root


def verify_rotation(trusted: Root, new: SignedRoot, now: datetime) -> Root:
    """Return the new root if it is a valid successor of `trusted`, else RootRotationError."""
    nr = new.root
    if nr.version != trusted.version + 1:
        raise RootRotationError(
            f"new root has version {nr.version}, expected {trusted.version + 1} "
            "(rotate one version at a time)"
        )
    data = nr.signed_bytes()
    for keys, threshold, who in (
        (trusted.keys, trusted.threshold, f"old root v{trusted.version}"),
        (nr.keys, nr.threshold, f"new root v{nr.version}"),
    ):
        try:
            check_threshold(data, new.signatures, keys, threshold, f"root v{nr.version}")
        except (SignatureError, ThresholdError) as e:
            raise RootRotationError(
                f"new root v{nr.version} is not signed by a threshold ({threshold}) of the "
                f"{who}'s keys: {e}"
            ) from e
    if nr.is_expired(now):
        raise ExpiredError(f"new root v{nr.version} expired at {format_time(nr.expires)}")
    return nr
