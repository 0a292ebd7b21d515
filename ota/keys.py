"""Ed25519 keys: generation, PEM files, and key ids (sha256 of the raw public key, hex).

Private keys are written PKCS#8 PEM with mode 0600; public keys as SubjectPublicKeyInfo PEM.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.fsutil import atomic_write_bytes
from ota.ed25519 import key_problem, signature_problem
from ota.errors import BundleFormatError, KeyFileError

# cryptography (~8 MB resident) is imported where a key is used, not with this module: the
# agent's long-running process handles keys as bytes and leaves signature work to a
# short-lived child (edge_agent.updates.trust_worker).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "KEY_TYPE",
    "PrivateKey",
    "PublicKey",
    "generate_keypair_files",
    "load_private_key",
    "load_public_key",
]

KEY_TYPE = "ed25519"
_RAW_LEN = 32
MAX_KEY_FILE_BYTES = 16 * 1024


@dataclass(frozen=True)
class PublicKey:
    """A public key as trusted by a root document."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != _RAW_LEN:
            raise BundleFormatError(f"ed25519 public key must be {_RAW_LEN} bytes")
        why = key_problem(self.raw)
        if why is not None:  # e.g. a small-order key, which OpenSSL would accept
            raise BundleFormatError(f"ed25519 public key {self.raw.hex()[:16]}... is {why}")

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True only for a strictly valid signature (canonical, non-small-order R, S < L)."""
        if signature_problem(signature) is not None:
            return False
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"keytype": KEY_TYPE, "public": self.raw.hex()}

    @classmethod
    def from_dict(cls, d: object, where: str) -> PublicKey:
        if not isinstance(d, dict) or d.get("keytype") != KEY_TYPE:
            raise BundleFormatError(f"{where}: expected {{'keytype': 'ed25519', 'public': hex}}")
        pub = d.get("public")
        try:
            raw = bytes.fromhex(pub) if isinstance(pub, str) else b""
        except ValueError as e:
            raise BundleFormatError(f"{where}.public: not hex") from e
        if len(raw) != _RAW_LEN:
            raise BundleFormatError(f"{where}.public: expected {_RAW_LEN} bytes of hex")
        return cls(raw)

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class PrivateKey:
    """A signing key. Not a dataclass on purpose: it must never be printed or compared."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        return PublicKey(
            self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @property
    def cryptography_key(self) -> Ed25519PrivateKey:
        """The underlying key, for signers of other formats (TUF metadata)."""
        return self._key

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"PrivateKey(keyid={self.keyid[:12]}...)"


def _read(path: Path) -> bytes:
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror or e}") from e
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: too large for a key file")
    return data


def load_private_key(path: Path) -> PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return PrivateKey(key)


def load_public_key(path: Path) -> PublicKey:
    """Read a public key; a private key file is accepted too (its public half is used)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read(path)
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        return PublicKey(raw)
    except BundleFormatError as e:  # OpenSSL loads small-order keys; we never trust them
        raise KeyFileError(f"{path}: {e}") from e


def generate_keypair_files(out_dir: Path, name: str) -> tuple[Path, Path, str]:
    """Write `<name>.key` (0600) and `<name>.pub` into out_dir; refuse to overwrite a key."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p}: exists; refusing to overwrite a key (move it away first)")
    key = PrivateKey.generate()
    # Create the private file 0600 from the start: it is never world-readable, not even briefly.
    old_umask = os.umask(0o077)
    try:
        atomic_write_bytes(priv_path, key.to_pem(), mode=0o600)
    finally:
        os.umask(old_umask)
    atomic_write_bytes(pub_path, key.public.to_pem(), mode=0o644)
    return priv_path, pub_path, key.keyid
