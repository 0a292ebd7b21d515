"""Canonical JSON bytes and the one timestamp format used in signed documents.

Signatures cover bytes, so the bytes must not depend on who serialised them:
sorted keys, no whitespace, UTF-8, no NaN/inf.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ota.errors import BundleFormatError

__all__ = [
    "TIME_FORMAT",
    "canonical_bytes",
    "format_time",
    "parse_json",
    "parse_json_object",
    "parse_time",
]

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def canonical_bytes(obj: Any) -> bytes:
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError, RecursionError) as e:
        raise BundleFormatError(f"cannot serialise to canonical JSON: {e}") from e
    return text.encode("utf-8")


def parse_json(data: bytes, what: str) -> Any:
    """Parse untrusted `data` as JSON; every way it can fail is a BundleFormatError naming
    `what` (hostile nesting makes the parser raise RecursionError, not ValueError)."""
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError as e:
        raise BundleFormatError(f"{what}: JSON nested too deeply") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise BundleFormatError(f"{what}: not valid UTF-8 JSON: {e}") from e


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse `data` as a JSON object; anything else is a BundleFormatError naming `what`."""
    obj = parse_json(data, what)
    if not isinstance(obj, dict):
        raise BundleFormatError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_time(text: object, what: str) -> datetime:
    """Parse the strict `YYYY-MM-DDTHH:MM:SSZ` form (one spelling, so round-trips are exact)."""
    if not isinstance(text, str):
        raise BundleFormatError(f"{what}: expected a time string like 2030-01-01T00:00:00Z")
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise BundleFormatError(
            f"{what}: {text!r} is not of the form 2030-01-01T00:00:00Z (UTC)"
        ) from e


def format_time(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    return t.astimezone(timezone.utc).strftime(TIME_FORMAT)
