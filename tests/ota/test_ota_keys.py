"""Key and signature validity: keys and signatures that are not strictly valid Ed25519
never count toward a threshold (OpenSSL alone accepts a small-order key, under which one
fixed signature verifies every message)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import Env
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ota.bundle import read_header
from ota.cli import main
from ota.ed25519 import key_problem, signature_problem
from ota.errors import BundleFormatError, KeyFileError, ThresholdError
from ota.keys import PublicKey, load_public_key
from ota.root import SignedRoot
from ota.signing import Signature, check_threshold

IDENTITY = bytes([1]) + bytes(31)  # the neutral point: order 1
ORDER_8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
L = 2**252 + 27742317777372353535851937790883648493


def test_openssl_alone_would_accept_a_key_that_verifies_anything() -> None:
    """Why the checks exist: this is what a device would trust without them."""
    forged = IDENTITY + bytes(32)  # R = identity, S = 0
    Ed25519PublicKey.from_public_bytes(IDENTITY).verify(forged, b"any message at all")


@pytest.mark.parametrize("raw", [IDENTITY, ORDER_8, (2**255 - 19 + 1).to_bytes(32, "little")])
def test_small_order_or_non_canonical_keys_are_refused(raw: bytes) -> None:
    assert key_problem(raw) is not None
    with pytest.raises(BundleFormatError, match="ed25519 public key"):
        PublicKey(raw)


def test_root_listing_a_small_order_key_is_malformed(env: Env) -> None:
    doc = json.loads(SignedRoot(env.root).to_bytes())
    doc["signed"]["keys"][hashlib.sha256(IDENTITY).hexdigest()] = {
        "keytype": "ed25519", "public": IDENTITY.hex(),
    }  # fmt: skip
    with pytest.raises(BundleFormatError, match="small order"):
        SignedRoot.from_bytes(json.dumps(doc).encode())


def test_small_order_public_key_file_is_a_key_file_error(tmp_path: Path) -> None:
    pem = Ed25519PublicKey.from_public_bytes(IDENTITY).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "evil.pub").write_bytes(pem)
    with pytest.raises(KeyFileError, match="small order"):
        load_public_key(tmp_path / "evil.pub")
    rc = main(["root", "init", "--key", str(tmp_path / "evil.pub"), "--threshold", "1",
               "--expires", "30d", "--out", str(tmp_path / "root.json")])  # fmt: skip
    assert rc == 2
    assert not (tmp_path / "root.json").exists()


def test_malformed_signatures_never_count_toward_the_threshold(env: Env) -> None:
    header = read_header(env.bundle())
    data = header.manifest_bytes
    good = {s.keyid: s.sig for s in header.signatures}
    k0, k1 = env.keys[0], env.keys[1]
    s0 = good[k0.keyid]
    s_plus_l = s0[:32] + (int.from_bytes(s0[32:], "little") + L).to_bytes(32, "little")
    small_r = ORDER_8 + bytes(32)
    assert signature_problem(s0) is None
    assert signature_problem(s_plus_l) is not None
    assert signature_problem(small_r) is not None
    for bad in (s_plus_l, small_r):
        sigs = [Signature(k0.keyid, bad), Signature(k1.keyid, good[k1.keyid])]
        with pytest.raises(ThresholdError):
            check_threshold(data, sigs, env.root.keys, 2, "bundle manifest")
    assert check_threshold(data, header.signatures, env.root.keys, 2, "m") == frozenset(good)
