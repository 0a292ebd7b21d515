"""Root documents: self-signed threshold, expiry, and rotation (ADR 0002)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from conftest import NOW, PROFILE, Env

from ota.bundle import read_header
from ota.errors import (
    BundleFormatError,
    ExpiredError,
    RootRotationError,
    SignatureError,
    ThresholdError,
)
from ota.keys import PrivateKey
from ota.root import Root, SignedRoot, trust_root, verify_rotation
from ota.verify import verify


def signed(root: Root, *keys: PrivateKey) -> SignedRoot:
    doc = SignedRoot(root)
    for k in keys:
        doc = doc.sign(k)
    return SignedRoot.from_bytes(doc.to_bytes())  # through the file format, as a device reads it


def new_root(keys: list[PrivateKey], version: int = 2, threshold: int = 2) -> Root:
    return Root(version, NOW + timedelta(days=365), threshold, {k.keyid: k.public for k in keys})


def test_root_file_round_trips_and_is_trusted(env: Env) -> None:
    doc = signed(env.root, *env.keys[:2])
    assert doc.root == env.root
    assert trust_root(doc, NOW) == env.root


def test_unsigned_root_is_not_trusted(env: Env) -> None:
    with pytest.raises(SignatureError):
        trust_root(signed(env.root), NOW)


def test_root_below_its_threshold(env: Env) -> None:
    with pytest.raises(ThresholdError):
        trust_root(signed(env.root, env.keys[0]), NOW)


def test_expired_root(env: Env) -> None:
    with pytest.raises(ExpiredError):
        trust_root(signed(env.root, *env.keys), NOW + timedelta(days=366))


def test_root_keyid_must_be_hash_of_key(env: Env) -> None:
    d = json.loads(signed(env.root, *env.keys).to_bytes())
    kid, key = next(iter(d["signed"]["keys"].items()))
    d["signed"]["keys"] = {
        "0" * 64: key,
        **{k: v for k, v in d["signed"]["keys"].items() if k != kid},
    }
    with pytest.raises(BundleFormatError):
        SignedRoot.from_bytes(json.dumps(d).encode())


def test_rotation_to_new_keys(env: Env) -> None:
    fresh = [PrivateKey.generate() for _ in range(2)]
    doc = signed(new_root(fresh), *env.keys[:2], *fresh)
    rotated = verify_rotation(env.root, doc, NOW)
    assert rotated.version == 2
    # Bundles signed by the old keys stop verifying; bundles by the new keys do.
    old_signed = read_header(env.bundle())
    with pytest.raises(SignatureError):
        verify(old_signed.manifest_bytes, old_signed.signatures, rotated, -1, PROFILE, NOW)
    new_signed = read_header(env.bundle("new.bundle", signers=fresh))
    verify(new_signed.manifest_bytes, new_signed.signatures, rotated, -1, PROFILE, NOW)


def test_root_rotation_signed_by_too_few_old_keys(env: Env) -> None:
    fresh = [PrivateKey.generate() for _ in range(2)]
    doc = signed(new_root(fresh), env.keys[0], *fresh)
    with pytest.raises(RootRotationError, match="old root"):
        verify_rotation(env.root, doc, NOW)


def test_root_rotation_signed_only_by_attacker_keys(env: Env) -> None:
    attacker = [PrivateKey.generate() for _ in range(2)]
    with pytest.raises(RootRotationError):
        verify_rotation(env.root, signed(new_root(attacker), *attacker), NOW)


def test_root_rotation_without_new_keys_threshold(env: Env) -> None:
    fresh = [PrivateKey.generate() for _ in range(2)]
    doc = signed(new_root(fresh), *env.keys[:2], fresh[0])
    with pytest.raises(RootRotationError, match="new root"):
        verify_rotation(env.root, doc, NOW)


@pytest.mark.parametrize("version", [1, 3])
def test_root_rotation_must_be_next_version(env: Env, version: int) -> None:
    doc = signed(new_root(env.keys, version=version), *env.keys)
    with pytest.raises(RootRotationError, match="version"):
        verify_rotation(env.root, doc, NOW)


def test_root_rotation_edited_after_signing(env: Env) -> None:
    doc = signed(new_root(env.keys), *env.keys)
    d = json.loads(doc.to_bytes())
    d["signed"]["threshold"] = 1
    with pytest.raises(RootRotationError):
        verify_rotation(env.root, SignedRoot.from_bytes(json.dumps(d).encode()), NOW)


def test_root_threshold_must_be_reachable(env: Env) -> None:
    with pytest.raises(BundleFormatError):
        Root(1, NOW, 4, {k.keyid: k.public for k in env.keys})
