"""OPC UA security for the opcua source: Basic256Sha256 with certificates from files, a
pinned server certificate checked before anything is sent to the server, and asyncua's
errors translated into what the source runner must do (wait, or refuse)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from edge_agent.errors import SourceDisconnectedError, SourceError

__all__ = ["certificate_uri", "der", "read_secret", "secure", "translate_error"]


async def secure(
    client: Any,
    *,
    url: str,
    mode: str,
    certificate: str,
    private_key: str,
    server_certificate: str,
    application_uri: str,
) -> None:
    """Set Basic256Sha256 with `mode` ("Sign" or "SignAndEncrypt") on an asyncua client
    before it connects. SourceError: a file that cannot be read, a certificate without
    an application URI, a server presenting another certificate than the pinned one."""
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from asyncua.ua import MessageSecurityMode

    for what, path in (("certificate", certificate), ("private_key", private_key),
                       ("server_certificate", server_certificate)):  # fmt: skip
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise SourceError(f"opcua {what} {path}: cannot read ({e.strerror})") from e
    _check_key_matches(certificate, private_key)
    client.application_uri = application_uri or certificate_uri(certificate)
    if server_certificate:
        # A pinned certificate is checked before anything is encrypted to it: a server
        # presenting another one is refused (a replaced server, or a man in the middle).
        pinned = der(server_certificate)
        endpoints = await client.connect_and_get_server_endpoints()
        offered = [bytes(e.ServerCertificate or b"") for e in endpoints]
        if not any(c.startswith(pinned) for c in offered):
            raise SourceError(
                f"opcua {url}: the server's certificate is not the pinned "
                f"server_certificate {server_certificate}; if the server's certificate "
                "was renewed, pin the new one"
            )
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate,
        private_key,
        server_certificate=server_certificate or None,
        mode=getattr(MessageSecurityMode, mode),
    )


def read_secret(path: str) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise SourceError(f"opcua password_file {path}: cannot read ({e.strerror})") from e


def _load_certificate(path: str) -> Any:
    from cryptography import x509

    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def der(path: str) -> bytes:
    """A certificate file (PEM or DER) as DER bytes."""
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        out: bytes = _load_certificate(path).public_bytes(Encoding.DER)
    except (OSError, ValueError) as e:
        raise SourceError(f"opcua certificate {path}: cannot load ({e})") from e
    return out


def _check_key_matches(certificate: str, private_key: str) -> None:
    """SourceError when `private_key` is not the key of `certificate`: the server only
    drops the secure channel then, which reads as a server that does not answer."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_der_private_key,
        load_pem_private_key,
    )

    try:
        with open(private_key, "rb") as f:
            data = f.read()
        load = load_pem_private_key if data.lstrip().startswith(b"-----") else load_der_private_key
        key = load(data, password=None)
    except (OSError, ValueError, TypeError) as e:
        raise SourceError(
            f"opcua private_key {private_key}: cannot load ({e}); give an unencrypted "
            "PEM or DER private key"
        ) from e
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    cert_key = _der_certificate(certificate).public_key()
    if key.public_key().public_bytes(*spki) != cert_key.public_bytes(*spki):
        raise SourceError(
            f"opcua private_key {private_key} does not belong to certificate {certificate}; "
            "give the key the certificate was made with"
        )


def _der_certificate(path: str) -> Any:
    try:
        return _load_certificate(path)
    except (OSError, ValueError) as e:
        raise SourceError(f"opcua certificate {path}: cannot load ({e})") from e


def certificate_uri(path: str) -> str:
    """The application URI in a certificate's subjectAltName (servers check the client's
    ApplicationUri against it)."""
    from cryptography import x509

    try:
        cert = _load_certificate(path)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except (OSError, ValueError, x509.ExtensionNotFound) as e:
        raise SourceError(
            f"opcua certificate {path}: no application URI found ({e}); set application_uri"
        ) from e
    if not uris:
        raise SourceError(
            f"opcua certificate {path}: no URI in subjectAltName; set application_uri"
        )
    return str(uris[0])


def translate_error(url: str, e: Exception) -> SourceError:
    """asyncua's and the network's errors, as the runner needs them: a server that is
    away is waited for; a refusal (security, a bad setting) spends the restart budget."""
    if isinstance(e, SourceError):
        return e
    from asyncua.ua import uaerrors

    timeouts = (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)
    if isinstance(e, (OSError, ConnectionError, *timeouts)):
        # str(): an exception is always truthy, and a timeout's message is empty
        return SourceDisconnectedError(f"opcua {url}: cannot connect: {str(e) or type(e).__name__}")
    if isinstance(e, uaerrors.UaStatusCodeError):
        return SourceError(f"opcua {url}: refused: {type(e).__name__}: {e}")
    if isinstance(e, uaerrors.UaError):
        return SourceError(
            f"opcua {url}: {e} (check security_policy and security_mode against the "
            "endpoints the server offers)"
        )
    return SourceError(f"opcua {url}: {type(e).__name__}: {e}")
