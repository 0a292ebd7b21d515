"""Strict validity checks for Ed25519 public keys and signatures (pure, no I/O).

OpenSSL (under `cryptography`) accepts small-order public keys: with the identity point
as the key, the signature R = identity, S = 0 verifies for EVERY message. Such a key in
a root would count toward the threshold for anything anyone writes. So before a key is
trusted, and before a signature is checked, the encodings are validated here (as in
RFC 8032 section 5.1.3 plus the usual strictness rules, cf. ZIP-215 / "Taming the many
EdDSAs"): canonical point encodings, not of small order, public keys in the prime-order
subgroup, and S reduced below the group order L.
"""

from __future__ import annotations

__all__ = ["key_problem", "signature_problem"]

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_L = 2**252 + 27742317777372353535851937790883648493
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)
_IDENTITY: _Point = (0, 1, 1, 0)


def _decode(raw: bytes) -> _Point | str:
    """The point `raw` encodes, or why it is not a canonical encoding of a point."""
    if len(raw) != 32:
        return "must be 32 bytes"
    n = int.from_bytes(raw, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= _P:
        return "non-canonical encoding (y >= p)"
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P != 0:
        x = (x * _SQRT_M1) % _P
        if (v * x * x - u) % _P != 0:
            return "not a point on the curve"
    if x == 0 and sign:
        return "non-canonical encoding (negative zero x)"
    if (x & 1) != sign:
        x = _P - x
    return (x, y, 1, (x * y) % _P)


def _add(a: _Point, b: _Point) -> _Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(k: int, p: _Point) -> _Point:
    q = _IDENTITY
    while k:
        if k & 1:
            q = _add(q, p)
        p = _add(p, p)
        k >>= 1
    return q


def _is_identity(p: _Point) -> bool:
    x, y, z, _t = p
    return x % _P == 0 and (y - z) % _P == 0


def _point_problem(raw: bytes, *, subgroup: bool) -> str | None:
    pt = _decode(raw)
    if isinstance(pt, str):
        return pt
    if _is_identity(_mul(8, pt)):
        return "a point of small order (would verify forged signatures)"
    if subgroup and not _is_identity(_mul(_L, pt)):
        return "not in the prime-order subgroup"
    return None


def key_problem(raw: bytes) -> str | None:
    """None if `raw` is a valid, strict Ed25519 public key; else what is wrong with it."""
    return _point_problem(raw, subgroup=True)


def signature_problem(sig: bytes) -> str | None:
    """None if `sig` is well formed (canonical R not of small order, S < L); else why."""
    if len(sig) != 64:
        return "must be 64 bytes"
    if int.from_bytes(sig[32:], "little") >= _L:
        return "S is not reduced (malleable signature)"
    why = _point_problem(sig[:32], subgroup=False)
    return None if why is None else f"R is {why}"
