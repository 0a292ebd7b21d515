"""The manifest model round-trips exactly, unknown fields included, and rejects bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ota.canonical import canonical_bytes
from ota.errors import BundleFormatError, UnsafePathError
from ota.manifest import Manifest

BASE: dict[str, Any] = {
    "_type": "bundle-manifest",
    "format": 1,
    "name": "vib-ae",
    "family": "autoencoder",
    "version": 3,
    "label": "AE v3",
    "files": [{"path": "model.onnx", "size": 10, "sha256": "a" * 64}],
    "profiles": ["rpi5", "x86-generic"],
    "min_agent_version": "0.1.0",
    "created": "2025-06-01T00:00:00Z",
    "expires": "2025-07-01T00:00:00Z",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


def test_round_trip_keeps_unknown_fields() -> None:
    d = {
        **BASE,
        "x-future": {"delta": [1, 2, 3]},
        "allow_downgrade": False,
        "files": [{**BASE["files"][0], "mode": "0644", "compression": None}],
    }
    m = Manifest.from_dict(d)
    assert m.to_dict() == d
    assert m.unrecognized == {"x-future": {"delta": [1, 2, 3]}}
    assert m.files[0].unrecognized == {"mode": "0644", "compression": None}
    assert m.allow_downgrade is False
    assert Manifest.from_bytes(m.canonical_bytes()) == m


@settings(max_examples=60, deadline=None)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=10).map(lambda s: "x-" + s), json_values))
def test_round_trip_is_exact_for_any_unknown_fields(extra: dict[str, Any]) -> None:
    d = {**BASE, **extra}
    m = Manifest.from_dict(d)
    assert m.to_dict() == d
    assert canonical_bytes(m.to_dict()) == canonical_bytes(d)


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    m = Manifest.from_dict({**BASE, "label": "Schwingung über 5 g"})
    raw = m.canonical_bytes()
    assert b" " not in raw.replace("Schwingung über 5 g".encode(), b"")
    assert (
        raw
        == json.dumps(
            m.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("version", True),
        ("version", "3"),
        ("format", 2),
        ("created", "2025-06-01 00:00:00"),
        ("expires", "2025-07-01T00:00:00+00:00"),
        ("profiles", []),
        ("files", []),
        ("min_agent_version", "latest"),
        ("_type", "root"),
    ],
)
def test_bad_fields_are_rejected(key: str, value: Any) -> None:
    with pytest.raises(BundleFormatError):
        Manifest.from_dict({**BASE, key: value})


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../b", "a\\b", "", "./a"])
def test_unsafe_file_paths_are_rejected(path: str) -> None:
    with pytest.raises(UnsafePathError):
        Manifest.from_dict({**BASE, "files": [{**BASE["files"][0], "path": path}]})


def test_duplicate_file_paths_are_rejected() -> None:
    with pytest.raises(BundleFormatError):
        Manifest.from_dict({**BASE, "files": BASE["files"] * 2})


def test_not_json() -> None:
    with pytest.raises(BundleFormatError):
        Manifest.from_bytes(b"\xff\xfe not json")
