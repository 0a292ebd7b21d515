"""A support bundle for a remote engineer: the config with secrets redacted, the status,
versions and the last log lines; gzip'd JSON, bounded, cut into chunks for MQTT replies.

Pure apart from reading package versions: the caller passes the config, status and logs.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import platform
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from edge_agent import __version__
from edge_agent.errors import EdgeAgentError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MAX_BUNDLE_BYTES",
    "REDACTED",
    "bundle_bytes",
    "chunks",
    "redact",
    "versions",
]

MAX_BUNDLE_BYTES = 512 * 1024  # compressed; larger: the oldest log lines are left out
DEFAULT_CHUNK_BYTES = 32 * 1024  # of the compressed bundle per reply (base64 adds a third)
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 192 * 1024
REDACTED = "<redacted>"
# Config keys whose values are secrets (or say where one is); matched as substrings.
_URL_PASSWORD = re.compile(r"(://[^/@\s:]*:)[^/@\s]+@")
_SECRET_KEYS = ("password", "secret", "token", "credential", "passphrase", "private")
_PACKAGES = ("numpy", "onnxruntime", "paho-mqtt", "tuf", "cryptography", "ai-edge-litert")


def redact(obj: Any) -> Any:
    """A copy of a config (dataclasses, mappings, lists) with every secret value replaced."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            secret = any(s in str(k).lower() for s in _SECRET_KEYS)
            out[str(k)] = REDACTED if secret and v not in ("", None) else redact(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        # a password in a URL (rtsp://user:pw@camera/, opc.tcp://user:pw@plc/)
        return _URL_PASSWORD.sub(rf"\1{REDACTED}@", obj)
    return obj


def versions() -> dict[str, Any]:
    from importlib import metadata

    pkgs: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {
        "agent": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": pkgs,
    }


def bundle_bytes(
    config: Any, status: Mapping[str, Any] | None, logs: Sequence[str], vers: Mapping[str, Any]
) -> tuple[bytes, int]:
    """The gzip'd JSON bundle within MAX_BUNDLE_BYTES, and how many log lines it holds
    (the oldest go first when it would be too large). EdgeAgentError if even without
    logs it does not fit."""
    keep = list(logs)
    while True:
        doc = {
            "config": redact(config),
            "status": status,
            "versions": dict(vers),
            "logs": keep,
        }
        data = gzip.compress(json.dumps(doc, default=str).encode(), mtime=0)
        if len(data) <= MAX_BUNDLE_BYTES:
            return data, len(keep)
        if not keep:
            raise EdgeAgentError(
                f"support bundle is {len(data)} bytes compressed even without logs "
                f"(limit {MAX_BUNDLE_BYTES}); read status on the device"
            )
        keep = keep[len(keep) // 2 :] if len(keep) > 1 else []


def chunks(data: bytes, chunk_bytes: int, logs_kept: int) -> list[dict[str, Any]]:
    """One reply result per chunk: `{id, chunk, chunks, bytes, sha256, encoding, data}`.
    The receiver joins `data` (base64) in `chunk` order and checks `sha256`."""
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise EdgeAgentError(
            f"chunk_bytes {chunk_bytes}: expected {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}"
        )
    bid = uuid.uuid4().hex[:12]
    digest = hashlib.sha256(data).hexdigest()
    pieces = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    return [
        {
            "id": bid,
            "chunk": i,
            "chunks": len(pieces),
            "bytes": len(data),
            "sha256": digest,
            "encoding": "gzip+base64",
            "log_lines": logs_kept,
            "data": base64.b64encode(p).decode(),
        }
        for i, p in enumerate(pieces)
    ]
