"""Staged rollouts, pure: the plan, the state of each wave and device, and what to do next.

A rollout moves one group of devices to one image-repository target in waves (cumulative
sizes: `2,20%,100%`). Each wave's devices are directed by device id; a device SUCCEEDS
when its retained state shows it serving the target version for the target's family with
its update at rest, and FAILS when it reports a final failure for that version, goes
offline, stops serving the target while its wave soaks, or has not succeeded within the
wave deadline. The next wave starts when every device of the current one has succeeded or
failed and `soak` has passed since the wave's last success; failures past the threshold
halt the rollout. Nothing here reads a clock, a file or the network: time is passed in
(UNIX seconds, wall clock, so a resumed driver keeps the same clocks), devices are seen
through `Observation`s built from the retained messages (`ota/rollout_observe.py`), and
`ota/rollout_driver.py` does the I/O. The state round-trips through `to_json`/`from_json`
(the persisted document, docs/fleet.md#staged-rollouts).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ota.errors import OtaError
from ota.rollout_observe import IN_PROGRESS, Observation, final_failure

__all__ = [
    "ACTIVE",
    "FORMAT",
    "Action",
    "DeviceRecord",
    "DeviceState",
    "Rollout",
    "RolloutError",
    "RolloutState",
    "RolloutUsageError",
    "Target",
    "Threshold",
    "Wave",
    "WaveState",
    "abort_check",
    "advance",
    "mark_directed",
    "mark_directing",
    "parse_duration",
    "parse_threshold",
    "parse_waves",
    "plan",
    "wave_sizes",
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


# --- option values ------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, what: str = "duration") -> float:
    """`10m`, `30s`, `2h`, `1d` or plain seconds (`45`, `2.5`)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise RolloutUsageError(f"{what} {text!r}: expected seconds or 30s / 10m / 2h / 1d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class WaveSize:
    value: float
    percent: bool

    def count(self, planned: int) -> int:
        if self.percent:  # at least the share asked for: 20% of 4 devices is 1
            return min(planned, math.ceil(self.value * planned / 100 - 1e-9))
        return min(planned, int(self.value))


def parse_waves(text: str) -> list[WaveSize]:
    """`2,20%,100%`: cumulative sizes, counts or percentages of the planned devices."""
    out: list[WaveSize] = []
    for part in text.split(","):
        p = part.strip()
        pct = p.endswith("%")
        num = p[:-1].strip() if pct else p
        try:
            value = float(num) if pct else int(num)
        except ValueError:
            raise RolloutUsageError(
                f"--waves {text!r}: {p!r} is neither a device count nor a percentage"
            ) from None
        if value <= 0 or (pct and value > 100):
            raise RolloutUsageError(f"--waves {text!r}: {p!r} is out of range")
        out.append(WaveSize(float(value), pct))
    if not out:
        raise RolloutUsageError("--waves: give at least one wave, e.g. 1,10%,100%")
    return out  # that the last wave reaches everyone is checked against the plan


def wave_sizes(specs: Sequence[WaveSize], planned: int) -> list[int]:
    """Cumulative device counts per wave for `planned` devices; waves that add nobody
    are dropped. The last wave must reach every planned device."""
    sizes: list[int] = []
    for s in specs:
        n = s.count(planned)
        if n > (sizes[-1] if sizes else 0):
            sizes.append(n)
    if not sizes or sizes[-1] != planned:
        raise RolloutUsageError(
            f"the waves reach {sizes[-1] if sizes else 0} of {planned} planned devices: "
            "the last wave must reach all of them (end --waves with 100%)"
        )
    return sizes


@dataclass(frozen=True)
class Threshold:
    """`--max-failures`: N devices or P% of the planned ones; more failures than this
    halt the rollout (0: the first failure halts it)."""

    value: float
    percent: bool

    def allowed(self, planned: int) -> int:
        if self.percent:
            return math.floor(self.value * planned / 100 + 1e-9)
        return int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


def parse_threshold(text: str) -> Threshold:
    t = text.strip()
    pct = t.endswith("%")
    try:
        value = float(t[:-1]) if pct else int(t)
    except ValueError:
        raise RolloutUsageError(f"--max-failures {text!r}: expected N or P%") from None
    if value < 0 or (pct and value > 100):
        raise RolloutUsageError(f"--max-failures {text!r}: out of range")
    return Threshold(float(value), pct)


# --- the persisted state -------------------------------------------------------------


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


# --- planning ------------------------------------------------------------------------


def plan(
    *,
    rid: str,
    group: str,
    target: Target,
    previous: dict[str, Any] | None,
    observations: Mapping[str, Observation],
    waves: Sequence[WaveSize],
    threshold: Threshold,
    options: Mapping[str, Any],
    prev_entries: Mapping[str, str],
    min_devices: int,
    now: float,
) -> Rollout:
    """Waves over the group's online devices in sorted id order; offline devices (and
    devices serving no stream of the target's family) are listed as skipped."""
    planned: list[str] = []
    skipped: dict[str, str] = {}
    for dev, o in sorted(observations.items()):
        if o.group != group:
            continue
        if not o.online:
            skipped[dev] = "offline at start"
        elif not o.serving.get(target.family):
            skipped[dev] = f"serves no stream of model family {target.family!r}"
        else:
            planned.append(dev)
    if not planned:
        raise RolloutError(
            f"group {group!r}: no online device serving {target.family!r} in the retained "
            f"fleet state ({len(skipped)} skipped): nothing to roll out to"
        )
    if len(planned) < min_devices:
        raise RolloutError(
            f"group {group!r}: {len(planned)} online device(s), fewer than --min-devices "
            f"{min_devices}; not started"
        )
    sizes = wave_sizes(waves, len(planned))
    wave_list: list[Wave] = []
    devices: dict[str, DeviceRecord] = {}
    start = 0
    for i, end in enumerate(sizes, 1):
        members = planned[start:end]
        wave_list.append(Wave(i, members))
        for d in members:
            known = [v for v in observations[d].serving[target.family] if v is not None]
            devices[d] = DeviceRecord(d, i, max(known) if known else None, prev_entries.get(d))
        start = end
    r = Rollout(
        id=rid, group=group, target=target, previous=previous, options=dict(options),
        allowed_failures=threshold.allowed(len(planned)), planned=planned, skipped=skipped,
        waves=wave_list, devices=devices, created_at=now, updated_at=now,
    )  # fmt: skip
    r.note(now, f"planned {len(planned)} device(s) in {len(wave_list)} wave(s)")
    return r


# --- driving -------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """What the driver must do after `advance`: "wait", "direct" (wave `wave`),
    "complete" (publish the group entry) or "halted" (stop: directs no one further)."""

    kind: str
    wave: int = 0


def mark_directing(r: Rollout, wave: int, now: float) -> Rollout:
    r = copy.deepcopy(r)
    w = r.waves[wave - 1]
    if w.state is WaveState.PENDING:
        w.state, w.directing_at = WaveState.DIRECTING, now
        r.note(now, f"wave {wave}: directing {len(w.devices)} device(s)")
    r.updated_at = now
    return r


def mark_directed(r: Rollout, wave: int, now: float) -> Rollout:
    r = copy.deepcopy(r)
    w = r.waves[wave - 1]
    w.state, w.directed_at = WaveState.DIRECTED, now
    for d in w.devices:
        rec = r.devices[d]
        if rec.state is DeviceState.PENDING:
            rec.state, rec.directed_at = DeviceState.DIRECTED, now
    r.note(now, f"wave {wave}: directed {', '.join(w.devices)}")
    r.updated_at = now
    return r


def _serves(o: Observation, family: str, version: int) -> bool:
    vs = o.serving.get(family) or ()
    return bool(vs) and all(v == version for v in vs)


def _versions(o: Observation, family: str) -> str:
    return ",".join(f"v{x}" for x in o.serving.get(family) or ()) or "nothing"


def classify(
    rec: DeviceRecord, o: Observation | None, target: Target, deadline_s: float, now: float
) -> tuple[DeviceState, str]:
    """A directed device's state from what it reports now, and the reason if it failed."""
    if rec.state in (DeviceState.FAILED, DeviceState.PENDING):
        return rec.state, rec.reason
    directed_at = rec.directed_at if rec.directed_at is not None else now
    v = target.version
    state: DeviceState = rec.state
    why = ""
    if o is None:
        pass  # nothing retained (yet): only the deadline can judge it
    elif not o.online:
        state, why = DeviceState.FAILED, f"went offline ({o.offline_why})"
    elif rec.state is DeviceState.SUCCEEDED:
        if not _serves(o, target.family, v):
            last = f"; last: {o.last_result}" if o.last_result else ""
            state = DeviceState.FAILED
            why = f"stopped serving v{v} during soak (serves {_versions(o, target.family)}{last})"
    else:
        why = final_failure(o, v, directed_at)
        if why:
            state = DeviceState.FAILED
        elif _serves(o, target.family, v) and o.phase not in IN_PROGRESS:
            state = DeviceState.SUCCEEDED
    if state is DeviceState.DIRECTED and now - directed_at >= deadline_s:
        seen = "nothing retained" if o is None else (
            f"OTA {o.phase}, serves {_versions(o, target.family)}"
        )  # fmt: skip
        state = DeviceState.FAILED
        why = f"not reporting: no success within the wave deadline of {deadline_s:g} s ({seen})"
    return state, why


def _watch(r: Rollout, w: Wave, obs: Mapping[str, Observation], now: float) -> None:
    """Each device of the wave judged again from what it reports now."""
    deadline_s = float(r.options["wave_deadline_s"])
    for d in w.devices:
        rec = r.devices[d]
        state, why = classify(rec, obs.get(d), r.target, deadline_s, now)
        if state is rec.state:
            continue
        rec.state = state
        if state is DeviceState.SUCCEEDED:
            rec.succeeded_at = now
            r.note(now, f"{d}: serves v{r.target.version}, committed")
        elif state is DeviceState.FAILED:
            rec.failed_at, rec.reason = now, why
            r.note(now, f"{d}: FAILED: {why}")
        r.updated_at = now


def _halt_if_over(r: Rollout, w: Wave, now: float) -> bool:
    failed = len(r.failures())
    if failed <= r.allowed_failures:
        return False
    r.state, r.updated_at, r.ended_at = RolloutState.HALTED, now, now
    r.reason = (
        f"{failed} device(s) failed, more than --max-failures {r.options['max_failures']} "
        f"allows ({r.allowed_failures}); halted in wave {w.index}: no further device is directed"
    )
    r.note(now, f"HALTED: {r.reason}")
    return True


def _soaked(r: Rollout, w: Wave, now: float) -> bool:
    """Every device settled and `soak` passed since the wave's last success."""
    recs = [r.devices[d] for d in w.devices]
    if any(x.state is DeviceState.DIRECTED for x in recs):
        return False
    if w.settled_at is None:
        w.settled_at = now
        wins = [x.succeeded_at for x in recs if x.succeeded_at is not None]
        w.soak_until = (max(wins) + float(r.options["soak_s"])) if wins else now
        r.updated_at = now
        r.note(now, f"wave {w.index}: every device settled; soaking until {w.soak_until:.0f}")
    return w.soak_until is not None and now >= w.soak_until


def advance(r: Rollout, obs: Mapping[str, Observation], now: float) -> tuple[Rollout, Action]:
    """The next state and action for a running rollout, given what devices report now."""
    r = copy.deepcopy(r)
    if r.state is RolloutState.COMPLETING:
        return r, Action("complete")
    if r.state is not RolloutState.RUNNING:
        return r, Action("wait")
    while (w := r.current_wave()) is not None:
        if w.state in (WaveState.PENDING, WaveState.DIRECTING):
            return r, Action("direct", w.index)
        _watch(r, w, obs, now)
        if _halt_if_over(r, w, now):
            return r, Action("halted")
        if not _soaked(r, w, now):
            return r, Action("wait")
        w.state, w.done_at, r.updated_at = WaveState.DONE, now, now
        r.note(now, f"wave {w.index}: done")
    r.state, r.updated_at = RolloutState.COMPLETING, now
    r.note(now, "every wave succeeded and soaked: directing the whole group")
    return r, Action("complete")


def abort_check(rec: DeviceRecord, o: Observation | None, target: Target) -> str:
    """During an abort, one directed device: "restored" (serves what it served before),
    "unchanged" (it served the target before the rollout), "rollback" (serves the target
    at rest: send it the rollback command), or "wait"."""
    if rec.before == target.version:
        return "unchanged"
    if o is None or not o.online:
        return "wait"
    fam = target.family
    if rec.before is not None and _serves(o, fam, rec.before) and o.phase not in IN_PROGRESS:
        return "restored"
    if _serves(o, fam, target.version) and o.phase not in IN_PROGRESS:
        return "rollback"
    return "wait"
