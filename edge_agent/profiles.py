"""Device profiles: what this hardware should run, and how we decided which it is.

Detection is pure (`detect(facts, profiles)`), fed by `read_facts()` from
/proc/device-tree/model, /etc/nv_tegra_release and the CPU, so the decision and its
reason can be tested for every board without owning one.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError
from edge_agent.resources import find_resource_dir
from edge_agent.schema import check, from_mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DeviceFacts", "Profile", "Selection", "detect", "load_profiles", "read_facts", "select"]

FALLBACK = "x86-generic"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    match_model: tuple[str, ...] = ()
    match_tegra: bool = False
    match_machine: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("onnx", "tflite")
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    tflite_delegates: tuple[str, ...] = ()
    threads: int = field(default=2, metadata=check("positive"))
    precision: tuple[str, ...] = ("int8", "fp32")
    model_memory_mb: int = field(default=256, metadata=check("positive"))
    # Accelerator memory the pool may keep models bound in (0: no budget, every model is
    # bound to onnx_providers at load and stays so, as without a GPU). runtime/binding.py
    accelerator_memory_mb: float = field(default=0.0, metadata=check("nonneg"))
    window_latency_ms: float = field(default=10.0, metadata=check("positive"))


@dataclass(frozen=True)
class DeviceFacts:
    device_tree_model: str = ""
    tegra_release: str = ""
    machine: str = ""
    cpu_count: int = 1


@dataclass(frozen=True)
class Selection:
    profile: Profile
    reason: str


def read_facts(root: Path = Path("/")) -> DeviceFacts:
    def _read(rel: str) -> str:
        try:
            return (root / rel).read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
        except OSError:
            return ""

    return DeviceFacts(
        device_tree_model=_read("proc/device-tree/model"),
        tegra_release=_read("etc/nv_tegra_release"),
        machine=platform.machine(),
        cpu_count=os.cpu_count() or 1,
    )


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    d = directory or find_resource_dir("device_profiles")
    if d is None:
        raise ConfigError("no device_profiles directory found (set EDGE_AGENT_PROFILES)")
    out: dict[str, Profile] = {}
    for p in sorted(d.glob("*.toml")):
        try:
            data: dict[str, Any] = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{p.name}: not a valid profile: {e}") from e
        prof = from_mapping(Profile, data, source=p.name)
        out[prof.name] = prof
    if not out:
        raise ConfigError(f"{d}: no device profiles (*.toml)")
    return out


def detect(facts: DeviceFacts, profiles: dict[str, Profile]) -> Selection:
    """Most specific evidence first: board model string, then Tegra, then CPU architecture."""
    model = facts.device_tree_model
    if model:
        for prof in profiles.values():
            for m in prof.match_model:
                if m.lower() in model.lower():
                    return Selection(prof, f"/proc/device-tree/model is {model!r} (matches {m!r})")
    if facts.tegra_release:
        for prof in profiles.values():
            if prof.match_tegra:
                first = facts.tegra_release.splitlines()[0][:60]
                return Selection(prof, f"/etc/nv_tegra_release present ({first})")
    for prof in profiles.values():
        if facts.machine.lower() in (m.lower() for m in prof.match_machine):
            why = f"CPU architecture {facts.machine} with {facts.cpu_count} cores"
            if model:
                why += f"; board {model!r} has no specific profile"
            return Selection(prof, why)
    fb = profiles.get(FALLBACK) or next(iter(profiles.values()))
    return Selection(fb, f"nothing matched (machine {facts.machine!r}); using {fb.name}")


def select(name: str, profiles: dict[str, Profile], facts: DeviceFacts | None = None) -> Selection:
    """`name` is "auto" (detect) or a profile name from the config."""
    if name == "auto":
        return detect(facts or read_facts(), profiles)
    if name not in profiles:
        raise ConfigError(
            f"profile: unknown profile {name!r} (known: {', '.join(sorted(profiles))})"
        )
    return Selection(profiles[name], "set in the configuration")
