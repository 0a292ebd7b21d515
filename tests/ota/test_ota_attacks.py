"""Each attack from the TUF/Uptane threat model is refused with its specific error, and
nothing reaches the slot directory."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import NOW, PROFILE, Env
from craft import craft, member, replace_member

from ota.bundle import read_header
from ota.errors import (
    AgentVersionError,
    BundleFormatError,
    ExpiredError,
    HashMismatchError,
    OtaError,
    ProfileMismatchError,
    RollbackError,
    SignatureError,
    SizeLimitError,
    ThresholdError,
    UnsafePathError,
)
from ota.keys import PrivateKey
from ota.manifest import FileEntry, Manifest
from ota.unpack import unpack
from ota.verify import NO_INSTALLED_VERSION, VerifiedManifest, verify


def apply(env: Env, bundle: Path, installed: int = NO_INSTALLED_VERSION) -> Path:
    """What a device does: read header, verify, unpack into the inactive slot."""
    header = read_header(bundle)
    vm = verify(header.manifest_bytes, header.signatures, env.root, installed, PROFILE, NOW)
    target = env.tmp / "slots" / "b"
    unpack(bundle, vm, target)
    return target


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def assert_refused(env: Env, bundle: Path, error: type[OtaError], installed: int = -1) -> None:
    slot = env.tmp / "slots" / "b"
    active = env.tmp / "slots" / "a"  # the model serving now, beside the target slot
    shutil.copytree(env.model_dir, active, dirs_exist_ok=True)
    before = _tree(active)
    with pytest.raises(error) as info:
        apply(env, bundle, installed)
    assert type(info.value) is error, f"expected {error.__name__}, got {info.value!r}"
    assert not slot.exists(), "a refused bundle must leave no slot behind"
    assert _tree(active) == before, "the active model must be unchanged"
    leftovers = list((env.tmp / "slots").glob(".*")) if (env.tmp / "slots").exists() else []
    assert leftovers == [], "no staging dir may remain"


def test_valid_bundle_is_accepted_and_unpacked(env: Env) -> None:
    target = apply(env, env.bundle())
    assert (target / "model.onnx").read_bytes() == (env.model_dir / "model.onnx").read_bytes()
    assert (target / "model.json").read_bytes() == (env.model_dir / "model.json").read_bytes()


def test_unsigned_bundle(env: Env) -> None:
    assert_refused(env, env.bundle(signers=[]), SignatureError)


def test_signed_with_wrong_keys(env: Env) -> None:
    strangers = [PrivateKey.generate(), PrivateKey.generate()]
    assert_refused(env, env.bundle(signers=strangers), SignatureError)


def test_below_threshold(env: Env) -> None:
    assert_refused(env, env.bundle(signers=env.keys[:1]), ThresholdError)


def test_same_key_twice_counts_once(env: Env) -> None:
    bundle = env.bundle(signers=env.keys[:1])
    sigs = json.loads(replace_and_read(bundle))
    replace_member(bundle, "signatures.json", json.dumps(sigs * 2).encode())
    assert_refused(env, bundle, ThresholdError)


def replace_and_read(bundle: Path) -> bytes:
    with tarfile.open(bundle, "r:") as tf:
        f = tf.extractfile("signatures.json")
        assert f is not None
        return f.read()


def test_bit_flipped_in_payload_file(env: Env) -> None:
    bundle = env.bundle()
    model = (env.model_dir / "model.onnx").read_bytes()
    raw = bytearray(bundle.read_bytes())
    at = raw.index(model) + 1000
    raw[at] ^= 0x01
    bundle.write_bytes(bytes(raw))
    assert_refused(env, bundle, HashMismatchError)


def test_manifest_edited_after_signing(env: Env) -> None:
    bundle = env.bundle()
    edited = json.loads(read_header(bundle).manifest_bytes)
    edited["profiles"].append("jetson-orin-nano")
    replace_member(bundle, "manifest.json", Manifest.from_dict(edited).canonical_bytes())
    assert_refused(env, bundle, SignatureError)


def test_manifest_swapped_between_verify_and_unpack(env: Env) -> None:
    bundle = env.bundle()
    header = read_header(bundle)
    vm = verify(header.manifest_bytes, header.signatures, env.root, -1, PROFILE, NOW)
    other = env.bundle("other.bundle", version=7)
    with pytest.raises(SignatureError):
        unpack(other, vm, env.tmp / "slot")
    assert not (env.tmp / "slot").exists()


def test_expired_bundle(env: Env) -> None:
    assert_refused(env, env.bundle(expires=NOW - timedelta(minutes=1)), ExpiredError)


def test_expiry_is_exclusive(env: Env) -> None:
    assert_refused(env, env.bundle(expires=NOW), ExpiredError)


def test_expired_root_refuses_everything(env: Env) -> None:
    env.root = dataclasses.replace(env.root, expires=NOW - timedelta(seconds=1))
    assert_refused(env, env.bundle(), ExpiredError)


@pytest.mark.parametrize("installed", [2, 3])
def test_version_equal_or_lower_than_installed(env: Env, installed: int) -> None:
    assert_refused(env, env.bundle(), RollbackError, installed=installed)


def test_signed_downgrade_override_is_ignored(env: Env) -> None:
    """Rollback attack with a replayed, validly signed `allow_downgrade` manifest: the old
    override field no longer lets anything at or below the installed version in."""
    header = read_header(env.bundle(allow_downgrade=True))
    with pytest.raises(RollbackError, match="new, higher version"):
        verify(header.manifest_bytes, header.signatures, env.root, 5, PROFILE, NOW)


def test_built_for_another_profile(env: Env) -> None:
    assert_refused(env, env.bundle(profiles=("jetson-orin-nano",)), ProfileMismatchError)


def test_needs_newer_agent(env: Env) -> None:
    header = read_header(env.bundle())
    with pytest.raises(AgentVersionError):
        verify(
            header.manifest_bytes,
            header.signatures,
            env.root,
            -1,
            PROFILE,
            NOW,
            agent_version="0.0.9",
        )


def _manifest_for(env: Env, files: tuple[FileEntry, ...]) -> Manifest:
    return Manifest(
        name="vib-ae",
        family="autoencoder",
        version=3,
        label="crafted",
        files=files,
        profiles=(PROFILE,),
        min_agent_version="0.1.0",
        created=NOW - timedelta(hours=1),
        expires=NOW + timedelta(days=1),
    )


def _entry(path: str, data: bytes) -> FileEntry:
    import hashlib

    return FileEntry(path, len(data), hashlib.sha256(data).hexdigest())


def test_payload_larger_than_declared(env: Env) -> None:
    good = b"m" * 4096
    m = _manifest_for(env, (_entry("model.onnx", good),))
    endless = good + b"x" * (1 << 20)
    bundle = craft(env.tmp / "big.bundle", m, env.keys, [member("payload/model.onnx", endless)])
    assert_refused(env, bundle, SizeLimitError)


def test_payload_shorter_than_declared(env: Env) -> None:
    good = b"m" * 4096
    m = _manifest_for(env, (_entry("model.onnx", good),))
    bundle = craft(env.tmp / "short.bundle", m, env.keys, [member("payload/model.onnx", good[:10])])
    assert_refused(env, bundle, HashMismatchError)


@pytest.mark.parametrize(
    "name",
    ["../evil", "payload/../../evil", "/etc/evil", "payload//model.onnx", "payload/./x"],
)
def test_path_traversal_or_absolute_path_in_archive(env: Env, name: str) -> None:
    good = b"m" * 64
    m = _manifest_for(env, (_entry("model.onnx", good),))
    bundle = craft(
        env.tmp / "trav.bundle",
        m,
        env.keys,
        [member("payload/model.onnx", good), member(name, b"owned")],
    )
    assert_refused(env, bundle, UnsafePathError)
    assert not (env.tmp / "evil").exists()


@pytest.mark.parametrize(
    ("kind", "link"),
    [
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.SYMTYPE, "../../outside"),
        (tarfile.LNKTYPE, "manifest.json"),
        (tarfile.CHRTYPE, ""),
        (tarfile.FIFOTYPE, ""),
        (tarfile.DIRTYPE, ""),
    ],
)
def test_symlink_hardlink_or_device_in_archive(env: Env, kind: bytes, link: str) -> None:
    good = b"m" * 64
    m = _manifest_for(env, (_entry("model.onnx", good),))
    bundle = craft(
        env.tmp / "link.bundle", m, env.keys, [member("payload/model.onnx", kind=kind, link=link)]
    )
    assert_refused(env, bundle, UnsafePathError)


def test_traversal_path_in_signed_manifest(env: Env) -> None:
    bad = _manifest_for(env, (_entry("model.onnx", b"x"),)).to_dict()
    bad["files"][0]["path"] = "../../etc/cron.d/x"
    from ota.canonical import canonical_bytes
    from ota.signing import sign_bytes

    mb = canonical_bytes(bad)
    sigs = [sign_bytes(k, mb) for k in env.keys]
    with pytest.raises(UnsafePathError):
        verify(mb, sigs, env.root, -1, PROFILE, NOW)


def test_duplicate_member(env: Env) -> None:
    good = b"m" * 64
    m = _manifest_for(env, (_entry("model.onnx", good),))
    payload = [member("payload/model.onnx", good), member("payload/model.onnx", good)]
    assert_refused(env, craft(env.tmp / "dup.bundle", m, env.keys, payload), BundleFormatError)


def test_unlisted_member(env: Env) -> None:
    good = b"m" * 64
    m = _manifest_for(env, (_entry("model.onnx", good),))
    payload = [member("payload/model.onnx", good), member("payload/extra.so", b"\x7fELF")]
    assert_refused(env, craft(env.tmp / "extra.bundle", m, env.keys, payload), BundleFormatError)


def test_missing_payload_file(env: Env) -> None:
    m = _manifest_for(env, (_entry("model.onnx", b"m"), _entry("model.json", b"{}")))
    payload = [member("payload/model.onnx", b"m")]
    assert_refused(env, craft(env.tmp / "miss.bundle", m, env.keys, payload), BundleFormatError)


def test_not_a_tar(env: Env) -> None:
    bogus = env.tmp / "bogus.bundle"
    bogus.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(BundleFormatError):
        read_header(bogus)


def test_only_verified_manifest_can_be_unpacked(env: Env) -> None:
    # The type is the gate: unpack takes a VerifiedManifest, produced only by verify().
    header = read_header(env.bundle())
    vm = verify(header.manifest_bytes, header.signatures, env.root, -1, PROFILE, NOW)
    assert isinstance(vm, VerifiedManifest)
    assert vm.signer_keyids == tuple(sorted(k.keyid for k in env.keys[:2]))
