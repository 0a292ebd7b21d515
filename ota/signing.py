"""Detached signatures over bytes and the threshold count (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ota.errors import BundleFormatError, SignatureError, ThresholdError
from ota.keys import PrivateKey, PublicKey

__all__ = [
    "MAX_SIGNATURES",
    "Signature",
    "check_threshold",
    "sign_bytes",
    "signatures_from_list",
    "signatures_to_list",
]

MAX_SIGNATURES = 64  # more than any sane threshold; bounds the work an attacker can cause
_SIG_LEN = 64


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "sig": self.sig.hex()}

    @classmethod
    def from_dict(cls, d: object, where: str) -> Signature:
        if not isinstance(d, dict):
            raise BundleFormatError(f"{where}: expected an object with keyid and sig")
        keyid, sig = d.get("keyid"), d.get("sig")
        if not isinstance(keyid, str) or not isinstance(sig, str):
            raise BundleFormatError(f"{where}: keyid and sig must be hex strings")
        try:
            raw = bytes.fromhex(sig)
        except ValueError as e:
            raise BundleFormatError(f"{where}.sig: not hex") from e
        return cls(keyid, raw)


def signatures_from_list(obj: object, where: str) -> tuple[Signature, ...]:
    if not isinstance(obj, list):
        raise BundleFormatError(f"{where}: expected a list of signatures")
    if len(obj) > MAX_SIGNATURES:
        raise BundleFormatError(f"{where}: more than {MAX_SIGNATURES} signatures")
    return tuple(Signature.from_dict(d, f"{where}[{i}]") for i, d in enumerate(obj))


def signatures_to_list(sigs: Sequence[Signature]) -> list[dict[str, Any]]:
    return [s.to_dict() for s in sigs]


def sign_bytes(key: PrivateKey, data: bytes) -> Signature:
    return Signature(key.keyid, key.sign(data))


def check_threshold(
    data: bytes,
    signatures: Sequence[Signature],
    keys: Mapping[str, PublicKey],
    threshold: int,
    what: str,
) -> frozenset[str]:
    """Return the ids of trusted keys with a valid signature; raise if below threshold.

    A key counts once however often it signs. Zero valid signatures is a SignatureError
    (unsigned, wrong key, or content changed after signing); some but too few is a
    ThresholdError.
    """
    valid: set[str] = set()
    bad: set[str] = set()
    for s in signatures:
        key = keys.get(s.keyid)
        if key is None or s.keyid in valid:
            continue
        if len(s.sig) == _SIG_LEN and key.verify(s.sig, data):
            valid.add(s.keyid)
            bad.discard(s.keyid)
        else:
            bad.add(s.keyid)
    if len(valid) >= threshold:
        return frozenset(valid)
    if valid:
        raise ThresholdError(
            f"{what}: {len(valid)} valid signature(s) from trusted keys, threshold is "
            f"{threshold}; sign with more keys of the root"
        )
    if not signatures:
        raise SignatureError(f"{what}: unsigned (no signatures at all)")
    if bad:
        raise SignatureError(
            f"{what}: signature by trusted key {sorted(bad)[0][:12]}... does not verify: "
            "the content was changed after signing"
        )
    raise SignatureError(
        f"{what}: signed only by keys the root does not trust "
        f"({', '.join(sorted({s.keyid[:12] for s in signatures}))})"
    )
