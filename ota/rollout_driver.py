"""The rollout driver: the I/O around `ota.rollout`'s decisions.

Each poll: take a control request (pause/abort from another terminal), read the retained
fleet state (`ota.fleet_mqtt.read_retained`), let `advance` decide, persist any change,
then act: direct a wave (recorded as "directing" before the director publish and
"directed" after it and the group's refresh hint, so a driver killed in between directs the
same devices again on resume, which publishes the same entries, and hints again: a hint
carries no trust), or hand the target to the whole group. A resumed driver hints the
current wave again. The caller holds the group's lock.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.errors import PublishError
from ota.announce import fleet_topic, hint_body
from ota.broker_args import MqttTarget
from ota.fleet_mqtt import BrokerOptions, read_retained, send_command
from ota.keys import PrivateKey, load_private_key
from ota.rollout import (
    ACTIVE,
    DeviceRecord,
    Rollout,
    RolloutError,
    RolloutState,
    Target,
    Threshold,
    WaveSize,
    WaveState,
    abort_check,
    abort_wait_why,
    advance,
    mark_directed,
    mark_directing,
    may_redirect,
    plan,
)
from ota.rollout_director import (
    check_online_key,
    complete_group,
    device_entries,
    direct_devices,
    group_entry,
    image_target,
    restore_devices,
)
from ota.rollout_observe import Observation, observe
from ota.rollout_store import RolloutStore
from ota.tufrepo import Repository

__all__ = ["Driver", "Repos"]

log = logging.getLogger(__name__)

ROLLBACK_RESEND_S = 20.0  # a device busy with an update refuses a rollback: ask again
COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Repos:
    director: Path
    image: Path | None = None
    online_key: Path | None = None

    def open(self) -> tuple[Repository, Repository, PrivateKey]:
        """Both repositories and the online key, checked against the director's root:
        called before anything is recorded, so a wrong key changes nothing."""
        if self.image is None or self.online_key is None:
            raise RolloutError("this needs --image and --online-key (it signs the director)")
        director, key = Repository(self.director), load_private_key(self.online_key)
        check_online_key(director, key)
        return director, Repository(self.image), key


# What to do with an unfinished rollout that holds the group (`start` refuses a new one).
_UNFINISHED = {
    RolloutState.RUNNING: "resume it (`edge-ota rollout resume`) or abort it (`edge-ota "
    "rollout abort`)",
    RolloutState.PAUSED: "resume it (`edge-ota rollout resume`) or abort it (`edge-ota "
    "rollout abort`)",
    RolloutState.COMPLETING: "resume it (`edge-ota rollout resume` finishes it)",
    RolloutState.HALTED: "abort it (`edge-ota rollout abort` brings its directed devices "
    "back; a halted rollout cannot be resumed)",
    RolloutState.ABORTING: "finish its abort (`edge-ota rollout abort` again)",
}


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc).replace(microsecond=0)


@dataclass
class Driver:
    store: RolloutStore
    repos: Repos
    broker: BrokerOptions
    poll_s: float = 5.0
    offline_after_s: float = 900.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    say: Callable[[str], None] = print
    _last: dict[str, Any] | None = None  # the last event printed

    # --- reading and small actions ------------------------------------------------------
    def observe(self) -> dict[str, Observation]:
        messages, _how = read_retained(self.broker, quiet_s=1.0, max_s=60.0)
        return observe(self.broker.prefix, messages, self.clock(), self.offline_after_s)

    def _try_observe(self) -> dict[str, Observation] | None:
        """None when the broker cannot be read now: nothing is judged without the fleet
        state (an operator's lost connection must not fail devices), the next poll tries
        again."""
        try:
            return self.observe()
        except PublishError as e:
            self.say(f"cannot read the fleet state ({e}); trying again in {self.poll_s:g} s")
            return None

    def hint(self, group: str) -> None:
        from ota.publish import publish_retained

        b = self.broker
        body = hint_body(_utc(self.clock()))
        target = MqttTarget(
            host=b.host, port=b.port, username=b.username, password_file=b.password_file,
            ca_file=b.ca_file, cert_file=b.cert_file, key_file=b.key_file,
        )  # fmt: skip
        publish_retained(target, [(fleet_topic(group, b.prefix), body)])

    def save(self, r: Rollout) -> None:
        """Persist, and print the events not printed yet (the history is capped, so they
        are found after the last one printed, not by count)."""
        self.store.save(r)
        new = r.events
        if self._last is not None:
            at = next((i for i in range(len(new) - 1, -1, -1) if new[i] == self._last), None)
            new = new[at + 1 :] if at is not None else new
        for e in new:
            self.say(f"{time.strftime('%H:%M:%S', time.localtime(e['at']))} {e['event']}")
        if r.events:
            self._last = dict(r.events[-1])

    # --- start --------------------------------------------------------------------------
    def start(
        self,
        *,
        group: str,
        target_path: str,
        waves: list[WaveSize],
        threshold: Threshold,
        options: dict[str, object],
        min_devices: int,
    ) -> Rollout:
        """Plan a new rollout and persist it (the caller holds the lock)."""
        director, image, _ = self.repos.open()
        edge = image_target(image, target_path)
        target = Target(
            target_path, str(edge["name"]), str(edge.get("family", "")), int(edge["version"])
        )
        old = self.store.load(group)
        if old is not None and old.state in ACTIVE:
            raise RolloutError(
                f"group {group!r} has rollout {old.id} {old.state.value} (no driver runs it): "
                f"{_UNFINISHED[old.state]} before starting another"
            )
        prev = group_entry(director, target.name, group)
        if prev is not None and prev["path"] == target_path:
            raise RolloutError(f"group {group!r} is already directed to {target_path}")
        now = self.clock()
        obs = self.observe()
        members = [d for d, o in obs.items() if o.group == group]
        entries = device_entries(director, target.name, members)
        rid = f"{group}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"
        r = plan(
            rid=rid, group=group, target=target, previous=prev, observations=obs, waves=waves,
            threshold=threshold, options=options, prev_entries=entries,
            min_devices=min_devices, now=now,
        )  # fmt: skip
        if old is not None:
            self.store.archive(old)
        self._last = None
        self.save(r)
        for d, why in r.skipped.items():
            self.say(f"  skipped {d}: {why}")
        for w in r.waves:
            self.say(f"  wave {w.index}: {', '.join(w.devices)}")
        return r

    # --- driving ------------------------------------------------------------------------
    def drive(self, r: Rollout) -> Rollout:
        """Until the rollout completes, halts, or a pause/abort request stops it."""
        self._last = dict(r.events[-1]) if r.events else None
        if r.state is RolloutState.PAUSED:
            r.state = RolloutState.RUNNING
            r.note(self.clock(), "resumed")
            self.save(r)
        w = r.current_wave()
        if r.state is RolloutState.RUNNING and w is not None and w.state is WaveState.DIRECTED:
            try:
                self.hint(r.group)  # carries no trust; a device that missed it refreshes now
            except PublishError as e:
                self.say(f"cannot publish the refresh hint again ({e})")
        while r.state in (RolloutState.RUNNING, RolloutState.COMPLETING):
            req = self.store.take_request(r.group)
            if req is not None:
                return self._requested(r, req)
            obs: dict[str, Observation] | None = {}
            if r.state is RolloutState.RUNNING and r.current_wave() is not None:
                obs = self._try_observe()
            if obs is None:
                self.sleep(self.poll_s)
                continue
            before = r.to_json()
            r, action = advance(r, obs, self.clock())
            if r.to_json() != before:
                self.save(r)
            if action.kind == "direct":
                r = self._direct(r, action.wave)
                continue  # its devices are watched from the next poll on
            if action.kind == "complete":
                r = self._complete(r)
                continue
            if action.kind == "halted":
                break
            self.sleep(self.poll_s)
        return r

    def _requested(self, r: Rollout, req: dict[str, object]) -> Rollout:
        now = self.clock()
        who = f"pid {req.get('pid')} on {req.get('host')}"
        if req.get("request") == "pause":
            r.state, r.updated_at = RolloutState.PAUSED, now
            r.note(now, f"paused (asked by {who}); `edge-ota rollout resume` continues")
        else:
            r.note(now, f"abort asked by {who}: the driver stops, the aborting command restores")
            r.updated_at = now
        self.save(r)
        return r

    def _direct(self, r: Rollout, wave: int) -> Rollout:
        r = mark_directing(r, wave, self.clock())
        self.save(r)
        director, image, key = self.repos.open()
        devices = r.waves[wave - 1].devices
        direct_devices(
            director, image, target=r.target.path, devices=devices, online=key,
            now=_utc(self.clock()),
        )  # fmt: skip
        self.hint(r.group)  # before "directed": a driver killed here hints again on resume
        r = mark_directed(r, wave, self.clock())
        self.save(r)
        return r

    def _complete(self, r: Rollout) -> Rollout:
        director, image, key = self.repos.open()
        complete_group(
            director, image, target=r.target.path, name=r.target.name, group=r.group,
            devices=r.planned, online=key, now=_utc(self.clock()),
        )  # fmt: skip
        now = self.clock()
        r.state, r.updated_at, r.ended_at = RolloutState.COMPLETED, now, now
        r.note(now, f"COMPLETED: group {r.group} directed to {r.target.path}")
        self.save(r)
        self.hint(r.group)
        return r

    # --- abort --------------------------------------------------------------------------
    def abort(self, r: Rollout, deadline_s: float) -> Rollout:
        """Bring back every device the rollout directed (or, run again, those an earlier
        abort did not): roll back the ones serving the target, and give each its previous
        direction once it serves what it served before, waiting at most `deadline_s`.
        In that order because a device directed to its previous version while it still
        serves the target refuses it as a downgrade, and keeps that RollbackError as its
        last result. A device not back by the deadline stays directed to the target (so
        it does not refuse its previous version); `abort` again finishes it. The key is
        checked before anything changes; each step is idempotent, so an interrupted abort
        is redone in full."""
        recs = [d for d in r.directed() if (d.abort or {}).get("result") in (None, "not_restored")]
        repos = self.repos.open() if recs else None
        now = self.clock()
        self._last = dict(r.events[-1]) if r.events else None
        if r.state is not RolloutState.ABORTING:
            r.state, r.updated_at = RolloutState.ABORTING, now
            r.note(now, f"aborting: bringing back {len(recs)} directed device(s)")
            self.save(r)
        results, why, redirected = self._bring_back(r, recs, repos, deadline_s)
        now = self.clock()
        for d in recs:
            res = results.get(d.device)
            if res is None:
                where = (
                    "its previous direction is restored" if d.device in redirected
                    else f"still directed to v{r.target.version}"
                )  # fmt: skip
                detail = f"not back within {deadline_s:g} s: {why.get(d.device, '?')}; {where}"
                d.abort = {"result": "not_restored", "detail": detail, "at": now}
            else:
                what = f"serves v{d.before}" if res == "restored" else "served the target before"
                d.abort = {"result": res, "detail": what, "at": now}
        everyone = r.directed()
        bad = [d.device for d in r.not_restored()]
        r.state, r.updated_at, r.ended_at = RolloutState.ABORTED, now, now
        r.reason = (
            f"aborted; {len(everyone) - len(bad)} of {len(everyone)} directed device(s) restored"
        )
        if bad:
            r.reason += (
                f"; not restored: {', '.join(bad)} (`edge-ota rollout abort` again brings "
                "them back once they report)"
            )
        r.note(now, f"ABORTED: {r.reason}")
        self.save(r)
        return r

    def _redirect(
        self,
        r: Rollout,
        repos: tuple[Repository, Repository, PrivateKey],
        recs: list[DeviceRecord],
    ) -> None:
        """Give these devices their previous direction back (one director publish). No
        refresh hint: a device serving its previous version has nothing to fetch, and a
        hint would make the ones rolled back but not yet redirected refuse the target."""
        director, image, key = repos
        restore_devices(
            director, image, target=r.target.path,
            prev_entries={d.device: d.prev_entry for d in recs}, online=key,
            now=_utc(self.clock()), group=r.group, group_prev=(r.previous or {}).get("path"),
        )  # fmt: skip
        r.note(self.clock(), f"director: {', '.join(d.device for d in recs)} directed back")
        self.save(r)

    def _bring_back(
        self,
        r: Rollout,
        recs: list[DeviceRecord],
        repos: tuple[Repository, Repository, PrivateKey] | None,
        deadline_s: float,
    ) -> tuple[dict[str, str], dict[str, str], set[str]]:
        """Until each device serves what it served before (or the deadline): the remote
        `rollback` to those serving the target at rest, again after ROLLBACK_RESEND_S if
        it did not take (a device busy with an update refuses it), and each device's
        previous direction as soon as it may have it. Returns the results, why each
        device left is not back, and the devices directed back."""
        sent: dict[str, float] = {}
        answers: dict[str, str] = {}  # each device's last reply to `rollback`
        why: dict[str, str] = {}
        results: dict[str, str] = {}
        redirected: set[str] = set()
        pending = {d.device: d for d in recs}
        end = self.clock() + deadline_s
        while pending:
            obs = self._try_observe()
            if obs is not None:
                back: list[DeviceRecord] = []
                verdicts = {d: abort_check(x, obs.get(d), r.target) for d, x in pending.items()}
                for dev, rec in sorted(pending.items()):
                    if verdicts[dev] in ("restored", "unchanged"):
                        results[dev] = verdicts[dev]
                    else:
                        why[dev] = abort_wait_why(rec, obs.get(dev), r.target)
                    if dev not in redirected and may_redirect(rec, obs.get(dev), r.target):
                        back.append(rec)
                ask = sorted(
                    d for d, v in verdicts.items()
                    if v == "rollback" and self.clock() >= sent.get(d, -1e18) + ROLLBACK_RESEND_S
                )  # fmt: skip
                if back and repos is not None:
                    self._redirect(r, repos, back)
                    redirected.update(d.device for d in back)
                for dev in results:
                    pending.pop(dev, None)
                if ask:
                    answers.update(self._ask_rollback(r, ask))
                    sent.update(dict.fromkeys(ask, self.clock()))
            if not pending or self.clock() >= end:
                break
            self.sleep(self.poll_s)
        for dev, answer in answers.items():
            if dev in why:
                why[dev] += f"; rollback asked: {answer}"
        return results, why, redirected

    def _ask_rollback(self, r: Rollout, devices: list[str]) -> dict[str, str]:
        """The remote `rollback` to these devices; each one's answer ("ok" or why not)."""
        body = json.dumps({"reason": f"rollout {r.id} aborted"}).encode()
        got = send_command(self.broker, devices, "rollback", body, COMMAND_TIMEOUT_S)
        out: dict[str, str] = {}
        for dev in devices:
            reply = (got.replies.get(dev) or [{}])[0]
            out[dev] = "ok" if reply.get("ok") else str(reply.get("error") or "no reply")
            self.say(f"  {dev}: rollback asked: {out[dev]}")
        return out
