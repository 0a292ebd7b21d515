"""Staged rollouts, pure: the plan, the state of each wave and device, and what to do next.

A rollout moves one group of devices to one image-repository target in waves (cumulative
sizes: `2,20%,100%`). Each wave's devices are directed by device id; a device SUCCEEDS
when its retained state shows it serving the target version for the target's family with
its update at rest, and FAILS when it reports a final failure for that version, goes
offline, stops serving the target while its wave soaks, or has not succeeded within the
wave deadline; a device missing any retained section is not judged at that poll (only the
deadline turns silence into a failure). The next wave starts when every device of the
current one has succeeded or failed and `soak` has passed since the wave's last success;
failures past the threshold halt the rollout. Nothing here reads a clock, a file or the
network: time is passed in (UNIX seconds, wall clock, so a resumed driver keeps the same
clocks), devices are seen through `Observation`s built from the retained messages
(`ota/rollout_observe.py`), and `ota/rollout_driver.py` does the I/O. The state
round-trips through `to_json`/`from_json` (`ota/rollout_state.py`; the document:
docs/fleet.md#staged-rollouts-edge-ota-rollout).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ota.rollout_observe import IN_PROGRESS, Observation, final_failure
from ota.rollout_options import (
    Threshold,
    WaveSize,
    parse_duration,
    parse_threshold,
    parse_waves,
    wave_sizes,
)
from ota.rollout_state import (
    ACTIVE,
    FORMAT,
    DeviceRecord,
    DeviceState,
    Rollout,
    RolloutError,
    RolloutState,
    RolloutUsageError,
    Target,
    Wave,
    WaveState,
)

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
    "WaveSize",
    "WaveState",
    "abort_check",
    "abort_wait_why",
    "advance",
    "classify",
    "mark_directed",
    "mark_directing",
    "may_redirect",
    "parse_duration",
    "parse_threshold",
    "parse_waves",
    "plan",
    "wave_sizes",
]


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
    """Waves over the group's online devices in sorted id order; offline devices, devices
    serving no stream of the target's family and devices serving a newer version are
    listed as skipped."""
    planned: list[str] = []
    skipped: dict[str, str] = {}
    for dev, o in sorted(observations.items()):
        if o.group != group:
            continue
        if not o.online:
            skipped[dev] = "offline at start"
        elif not o.complete:
            skipped[dev] = f"its retained state is incomplete (no {', '.join(o.missing)} yet)"
        elif not o.serving.get(target.family):
            skipped[dev] = f"serves no stream of model family {target.family!r}"
        elif max((v for v in o.serving[target.family] if v is not None), default=0) > (
            target.version
        ):
            # it would refuse the target (a device installs only newer versions)
            skipped[dev] = f"serves a version above v{target.version} already"
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


def _settled_on(o: Observation, family: str, version: int) -> bool:
    """Serves `version` with no update under way (a swap in progress may still fail)."""
    return _serves(o, family, version) and o.phase not in IN_PROGRESS


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
    if o is None or not o.complete:
        # nothing retained, or only part of it (a broker restarted without persistence
        # gets each section back separately): unknown this poll, only the deadline judges
        pass
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
        elif _settled_on(o, target.family, v):
            state = DeviceState.SUCCEEDED
    if state is DeviceState.DIRECTED and now - directed_at >= deadline_s:
        seen = (
            "nothing retained" if o is None
            else f"no retained {', '.join(o.missing)}" if not o.complete
            else f"OTA {o.phase}, serves {_versions(o, target.family)}"
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
    if o is None or not o.online or not o.complete:
        return "wait"
    fam = target.family
    if rec.before is not None and _settled_on(o, fam, rec.before):
        return "restored"
    if _settled_on(o, fam, target.version):
        return "rollback"
    return "wait"


def may_redirect(rec: DeviceRecord, o: Observation | None, target: Target) -> bool:
    """Whether an abort may give the device its previous direction now: it served the
    target before, or it last reported serving its previous version at rest (online or
    not). A device still on the target is rolled back first: directed to its previous
    version while serving the target it would refuse it as a downgrade (RollbackError)."""
    if rec.before == target.version:
        return True
    if o is None or not o.complete or rec.before is None:
        return False
    return _settled_on(o, target.family, rec.before)


def abort_wait_why(rec: DeviceRecord, o: Observation | None, target: Target) -> str:
    """Why a device is not back yet, in the operator's words (abort's per-device detail)."""
    if o is None:
        return "nothing retained from it"
    if not o.complete:
        return f"its retained state is incomplete (no {', '.join(o.missing)})"
    fam = target.family
    where = f"serves {_versions(o, fam)}, OTA {o.phase}"
    if not o.online:
        return f"offline ({o.offline_why}); last seen: {where}"
    if o.phase in IN_PROGRESS:
        return f"busy with an update ({where})"
    return where
