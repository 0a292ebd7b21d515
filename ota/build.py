"""Building a manifest from a model directory holding a model card (model.json)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edge_agent.errors import EdgeAgentError, ModelError
from edge_agent.runtime.card import CARD_FILE, load_card, sha256_file
from ota.errors import BundleFormatError, GoldenVectorError
from ota.manifest import FileEntry, Manifest
from ota.paths import check_relative_path

__all__ = ["BuildPlan", "check_golden", "plan_bundle"]


@dataclass(frozen=True)
class BuildPlan:
    manifest: Manifest
    sources: dict[str, Path]


def plan_bundle(
    model_dir: Path,
    *,
    profiles: Sequence[str],
    created: datetime,
    expires: datetime,
    min_agent_version: str,
    version: int | None = None,
) -> BuildPlan:
    """Describe the card and its model file; the manifest's version is the card's version.

    `version`, if given, must equal the card's: a bundle must never claim another version
    than the model it carries.
    """
    model_dir = Path(model_dir)
    try:
        card = load_card(model_dir, verify_hash=True)
    except ModelError as e:
        raise BundleFormatError(f"cannot build from {model_dir}: {e}") from e
    if version is not None and version != card.version:
        raise BundleFormatError(
            f"--version {version} differs from the card's version {card.version} "
            f"({model_dir / CARD_FILE}); bump the card instead"
        )
    if expires <= created:
        raise BundleFormatError("expiry must be after creation time")
    sources: dict[str, Path] = {}
    entries = []
    for rel in (CARD_FILE, card.file):
        check_relative_path(rel, f"{model_dir / CARD_FILE}: file")
        path = model_dir / rel
        if not path.is_file() or path.is_symlink():
            raise BundleFormatError(f"{path}: must be a regular file")
        sources[rel] = path
        entries.append(FileEntry(rel, path.stat().st_size, sha256_file(path)))
    manifest = Manifest(
        name=card.name,
        family=card.family,
        version=card.version,
        label=card.label,
        files=tuple(entries),
        profiles=tuple(profiles),
        min_agent_version=min_agent_version,
        created=created,
        expires=expires,
    )
    return BuildPlan(manifest, sources)


def check_golden(model_dir: Path) -> str:
    """Load the model as a device does and run its card's golden vectors (the check each
    device makes before a model may serve); returns a description of the model run.
    GoldenVectorError, saying what did not reproduce, when they fail or the model cannot
    be run on this machine."""
    from edge_agent.runtime.model import load_model  # the model runtime: only for build

    try:
        model = load_model(Path(model_dir))
    except EdgeAgentError as e:  # golden mismatch, runtime missing here, model too large
        raise GoldenVectorError(
            f"refusing to build {model_dir}: the golden vectors did not pass here ({e}); "
            "a device would refuse this model. Fix the model or the card's golden scores"
        ) from e
    return model.description
