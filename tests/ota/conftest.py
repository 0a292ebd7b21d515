"""Shared fixtures for OTA tests: real keys, a real root, a real tiny model dir, and a
factory building real signed bundles (no mocks)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ota.build import plan_bundle
from ota.bundle import add_signatures, read_header, write_bundle
from ota.keys import PrivateKey
from ota.root import Root
from ota.signing import sign_bytes

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
PROFILE = "rpi5"


def write_model_dir(directory: Path, version: int = 2, payload: bytes = b"") -> Path:
    """A real model directory: a card (model.json) and the model file it names."""
    directory.mkdir(parents=True, exist_ok=True)
    model_bytes = payload or bytes(range(256)) * 40
    (directory / "model.onnx").write_bytes(model_bytes)
    card = {
        "name": "vib-ae",
        "family": "autoencoder",
        "version": version,
        "label": f"vibration AE v{version}",
        "backend": "onnx",
        "file": "model.onnx",
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "input": {"name": "x", "shape": [-1, 4, 2], "dtype": "float32"},
        "output": {"name": "y", "shape": [-1, 4, 2], "dtype": "float32"},
        "preprocessing": {
            "window": 4,
            "hop": 2,
            "channels": ["ax", "ay"],
            "rate_hz": 100.0,
            "mean": [0.0, 0.0],
            "std": [1.0, 1.0],
        },
        "score": {"kind": "reconstruction_mse"},
        "threshold": {"value": 0.5, "method": "p99"},
        "golden": {"inputs": [[[0.0, 0.0]] * 4], "scores": [0.0]},
    }
    (directory / "model.json").write_text(json.dumps(card, indent=1))
    return directory


@dataclass
class Env:
    tmp: Path
    keys: list[PrivateKey]
    root: Root
    model_dir: Path

    def bundle(
        self,
        name: str = "b.bundle",
        *,
        signers: Sequence[PrivateKey] | None = None,
        version: int | None = None,
        profiles: Sequence[str] = (PROFILE,),
        expires: datetime | None = None,
        allow_downgrade: bool | None = None,
    ) -> Path:
        """Build and sign a real bundle (default: signed by a threshold of root keys)."""
        model_dir = self.model_dir
        if version is not None:
            model_dir = write_model_dir(self.tmp / f"model-v{version}", version)
        plan = plan_bundle(
            model_dir,
            profiles=profiles,
            created=NOW - timedelta(hours=1),
            expires=expires or NOW + timedelta(days=30),
            min_agent_version="0.1.0",
        )
        manifest = plan.manifest
        if allow_downgrade is not None:  # the override field old bundles carry (ignored now)
            manifest = dataclasses.replace(manifest, allow_downgrade=allow_downgrade)
        out = self.tmp / name
        write_bundle(out, manifest, plan.sources)
        signers = self.keys[:2] if signers is None else signers
        if signers:
            data = read_header(out).manifest_bytes
            add_signatures(out, [sign_bytes(k, data) for k in signers])
        return out


@pytest.fixture
def env(tmp_path: Path) -> Env:
    keys = [PrivateKey.generate() for _ in range(3)]
    root = Root(
        version=1,
        expires=NOW + timedelta(days=365),
        threshold=2,
        keys={k.keyid: k.public for k in keys},
    )
    return Env(tmp_path, keys, root, write_model_dir(tmp_path / "model"))


BundleFactory = Callable[..., Path]
