"""A staged rollout's persisted state: the plan, each wave and device, timestamps.

Mutable dataclasses changed only by `ota.rollout` (pure decisions) and saved after every
transition by `ota.rollout_store`; `Rollout.to_json`/`from_json` round-trip exactly (the
document is described in docs/fleet.md#staged-rollouts-edge-ota-rollout). Times are UNIX
seconds, wall clock, so a driver resumed elsewhere keeps the same soak and deadline clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ota.errors import OtaError

__all__ = [
    "ACTIVE",
    "FORMAT",
    "DeviceRecord",
    "DeviceState",
    "Rollout",
    "RolloutError",
    "RolloutState",
    "RolloutUsageError",
    "Target",
    "Wave",
    "WaveState",
]

FORMAT = 1
MAX_EVENTS = 500  # the persisted history stays small however long a rollout runs


class RolloutError(OtaError):
    """A rollout cannot be started or continued as asked (exit 1)."""


class RolloutUsageError(RolloutError):
    """A rollout option is malformed (exit 2)."""


class RolloutState(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETING = "completing"  # the group entry is being published
    COMPLETED = "completed"
    ABORTING = "aborting"
    ABORTED = "aborted"


# A group with a rollout in one of these states takes no new one.
ACTIVE = frozenset(
    {
        RolloutState.RUNNING,
        RolloutState.PAUSED,
        RolloutState.HALTED,
        RolloutState.COMPLETING,
        RolloutState.ABORTING,
    }
)


class WaveState(str, Enum):
    PENDING = "pending"
    DIRECTING = "directing"  # recorded before the director publish: redone on resume
    DIRECTED = "directed"
    DONE = "done"


class DeviceState(str, Enum):
    PENDING = "pending"  # not directed yet: still on the old model
    DIRECTED = "directed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Target:
    path: str  # the image repository's target path
    name: str
    family: str
    version: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "family": self.family,
            "version": self.version,
        }


@dataclass
class Wave:
    index: int  # 1-based
    devices: list[str]
    state: WaveState = WaveState.PENDING
    directing_at: float | None = None
    directed_at: float | None = None
    settled_at: float | None = None  # every device succeeded or failed
    soak_until: float | None = None
    done_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "devices": list(self.devices),
            "state": self.state.value,
            "directing_at": self.directing_at,
            "directed_at": self.directed_at,
            "settled_at": self.settled_at,
            "soak_until": self.soak_until,
            "done_at": self.done_at,
        }


@dataclass
class DeviceRecord:
    device: str
    wave: int
    before: int | None  # the family's version it served when planned
    prev_entry: str | None = None  # its own director entry for the model name, if any
    state: DeviceState = DeviceState.PENDING
    directed_at: float | None = None
    succeeded_at: float | None = None
    failed_at: float | None = None
    reason: str = ""
    abort: dict[str, Any] | None = None  # {"result": "restored"|..., "detail": ...}

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "wave": self.wave,
            "before": self.before,
            "prev_entry": self.prev_entry,
            "state": self.state.value,
            "directed_at": self.directed_at,
            "succeeded_at": self.succeeded_at,
            "failed_at": self.failed_at,
            "reason": self.reason,
            "abort": self.abort,
        }


@dataclass
class Rollout:
    id: str
    group: str
    target: Target
    previous: dict[str, Any] | None  # the group's director entry before: {"path", "version"}
    options: dict[str, Any]  # waves, soak_s, max_failures, min_devices, wave_deadline_s, ...
    allowed_failures: int
    planned: list[str]
    skipped: dict[str, str]
    waves: list[Wave]
    devices: dict[str, DeviceRecord]
    state: RolloutState = RolloutState.RUNNING
    reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    # derived ---------------------------------------------------------------------------
    def failures(self) -> list[DeviceRecord]:
        out = [d for d in self.devices.values() if d.state is DeviceState.FAILED]
        return sorted(out, key=lambda d: (d.failed_at or 0.0, d.device))

    def current_wave(self) -> Wave | None:
        return next((w for w in self.waves if w.state is not WaveState.DONE), None)

    def directed(self) -> list[DeviceRecord]:
        """Devices the rollout has directed (or may have: a wave recorded as directing)."""
        started = {w.index for w in self.waves if w.state is not WaveState.PENDING}
        return [d for d in self.devices.values() if d.wave in started]

    def not_restored(self) -> list[DeviceRecord]:
        """Directed devices an abort did not bring back (`abort` again finishes them)."""
        return [d for d in self.directed() if (d.abort or {}).get("result") == "not_restored"]

    def note(self, now: float, text: str) -> None:
        self.events.append({"at": now, "event": text})
        del self.events[:-MAX_EVENTS]

    def to_json(self) -> dict[str, Any]:
        return {
            "v": FORMAT,
            "id": self.id,
            "group": self.group,
            "target": self.target.to_json(),
            "previous": self.previous,
            "options": dict(self.options),
            "allowed_failures": self.allowed_failures,
            "state": self.state.value,
            "reason": self.reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "ended_at": self.ended_at,
            "planned": list(self.planned),
            "skipped": dict(self.skipped),
            "waves": [w.to_json() for w in self.waves],
            "devices": {k: d.to_json() for k, d in sorted(self.devices.items())},
            "failures": [
                {"device": d.device, "wave": d.wave, "at": d.failed_at, "reason": d.reason}
                for d in self.failures()
            ],
            "events": list(self.events),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Rollout:
        """The persisted document back; RolloutError (not KeyError) when it is not one."""
        try:
            if doc.get("v") != FORMAT:
                raise RolloutError(f"rollout state format {doc.get('v')!r}, expected {FORMAT}")
            t = doc["target"]
            waves = [
                Wave(
                    int(w["index"]),
                    [str(x) for x in w["devices"]],
                    WaveState(w["state"]),
                    w.get("directing_at"),
                    w.get("directed_at"),
                    w.get("settled_at"),
                    w.get("soak_until"),
                    w.get("done_at"),
                )
                for w in doc["waves"]
            ]
            devices = {
                k: DeviceRecord(
                    str(d["device"]),
                    int(d["wave"]),
                    d.get("before"),
                    d.get("prev_entry"),
                    DeviceState(d["state"]),
                    d.get("directed_at"),
                    d.get("succeeded_at"),
                    d.get("failed_at"),
                    str(d.get("reason", "")),
                    d.get("abort"),
                )
                for k, d in doc["devices"].items()
            }
            return cls(
                id=str(doc["id"]),
                group=str(doc["group"]),
                target=Target(str(t["path"]), str(t["name"]), str(t["family"]), int(t["version"])),
                previous=doc.get("previous"),
                options=dict(doc["options"]),
                allowed_failures=int(doc["allowed_failures"]),
                planned=[str(x) for x in doc["planned"]],
                skipped={str(k): str(v) for k, v in doc["skipped"].items()},
                waves=waves,
                devices=devices,
                state=RolloutState(doc["state"]),
                reason=str(doc.get("reason", "")),
                created_at=float(doc["created_at"]),
                updated_at=float(doc["updated_at"]),
                ended_at=doc.get("ended_at"),
                events=list(doc.get("events") or []),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RolloutError(f"rollout state is malformed: {type(e).__name__}: {e}") from e
