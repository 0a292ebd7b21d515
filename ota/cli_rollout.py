"""`edge-ota rollout start|status|pause|resume|abort`: staged rollouts (docs/fleet.md).

`start` plans the waves and drives them in the foreground; `resume` drives a paused or
interrupted rollout on from where it was. Exit codes (start and resume): 0 completed,
3 halted (failures past --max-failures), 4 paused, 5 stopped because `abort` was asked
from another terminal, 1 an error (broker, repository, a second driver), 2 bad usage,
130 interrupted (Ctrl-C: the rollout stays running; `resume` continues it). `abort` exits 0
when every directed device is back, 1 when some are not.
python-tuf is imported inside the commands only (`edge-ota` loads this module always).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ota.rollout import Rollout
    from ota.rollout_driver import Driver
    from ota.rollout_store import RolloutStore

__all__ = [
    "EXIT_ABORTED",
    "EXIT_HALTED",
    "EXIT_PAUSED",
    "add_rollout_commands",
]

EXIT_HALTED = 3
EXIT_PAUSED = 4
EXIT_ABORTED = 5
EXIT_INTERRUPTED = 130
REQUEST_WAIT_S = 90.0  # how long pause/abort wait for a running driver to take a request


def _store(args: argparse.Namespace) -> RolloutStore:
    """The group's rollout state; RolloutError when --director names no repository
    (checked first: a mistyped path must not leave a `<typo>.rollouts/` behind)."""
    from ota.rollout import RolloutError
    from ota.rollout_store import RolloutStore, default_state_dir

    if not (Path(args.director) / "metadata" / "1.root.json").is_file():
        raise RolloutError(
            f"--director {args.director}: the director repository is missing "
            "(no metadata/1.root.json there)"
        )
    return RolloutStore(args.state_dir or default_state_dir(args.director))


def _duration(text: str | None, what: str, default: float) -> float:
    """A duration option that must be more than 0 (a deadline, a poll interval)."""
    from ota.rollout import parse_duration

    return default if text is None else parse_duration(text, what, positive=True)


def _driver(args: argparse.Namespace, r: Rollout | None = None) -> Driver:
    from ota.cli_fleet import connection_from_args
    from ota.rollout_driver import Driver, Repos

    opts = r.options if r is not None else {}
    return Driver(
        store=_store(args),
        repos=Repos(args.director, args.image, args.online_key),
        broker=connection_from_args(args),
        poll_s=_duration(args.poll, "--poll", float(opts.get("poll_s", 5.0))),
        offline_after_s=_duration(
            args.offline_after, "--offline-after", float(opts.get("offline_after_s", 900.0))
        ),
        say=lambda line: print(line, flush=True),
    )


def _exit_for(r: Rollout) -> int:
    from ota.rollout import RolloutState

    if r.state is RolloutState.COMPLETED:
        print(f"rollout {r.id}: completed, group {r.group} serves {r.target.path}")
        return 0
    if r.state is RolloutState.HALTED:
        print(f"rollout {r.id}: HALTED: {r.reason}")
        for f in r.failures():
            print(f"  {f.device}: {f.reason}")
        print("  `edge-ota rollout abort` brings the directed devices back")
        return EXIT_HALTED
    if r.state is RolloutState.PAUSED:
        print(f"rollout {r.id}: paused; `edge-ota rollout resume` continues it")
        return EXIT_PAUSED
    print(f"rollout {r.id}: the driver stopped: an abort was asked (state {r.state.value})")
    return EXIT_ABORTED


def cmd_start(args: argparse.Namespace) -> int:
    from ota.rollout import RolloutUsageError, parse_duration, parse_threshold, parse_waves

    # every option first (exit 2), before the director, the broker or any file
    waves = parse_waves(args.waves)
    threshold = parse_threshold(args.max_failures)
    if args.min_devices < 1:
        raise RolloutUsageError(f"--min-devices {args.min_devices}: must be at least 1")
    options: dict[str, object] = {
        "waves": args.waves,
        "soak_s": parse_duration(args.soak, "--soak"),
        "max_failures": str(threshold),
        "min_devices": args.min_devices,
        "wave_deadline_s": parse_duration(args.wave_deadline, "--wave-deadline", positive=True),
        "poll_s": _duration(args.poll, "--poll", 5.0),
        "offline_after_s": _duration(args.offline_after, "--offline-after", 900.0),
    }
    d = _driver(args)
    d.repos.open()  # both repositories and the director's key, before anything is written
    store = d.store
    with store.lock(args.group, "start"):
        store.clear_request(args.group)  # a request left by a dead pair is not for this one
        r = d.start(
            group=args.group, target_path=args.target, waves=waves, threshold=threshold,
            options=options, min_devices=args.min_devices,
        )  # fmt: skip
        print(f"rollout {r.id}: {len(r.planned)} device(s) in {len(r.waves)} wave(s)", flush=True)
        return _exit_for(d.drive(r))


def cmd_resume(args: argparse.Namespace) -> int:
    from ota.rollout import RolloutError, RolloutState

    store = _store(args)
    with store.lock(args.group, "resume"):
        r = _load(store, args.group)
        if r.state not in (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.COMPLETING):
            hint = (
                " (`abort` again finishes the interrupted abort)"
                if r.state is RolloutState.ABORTING
                else " (`abort` brings its directed devices back)"
                if r.state is RolloutState.HALTED
                else ""
            )
            raise RolloutError(f"rollout {r.id} is {r.state.value}: nothing to resume{hint}")
        d = _driver(args, r)
        d.repos.open()  # the director's key, before the state changes
        print(f"rollout {r.id}: resuming ({r.state.value})", flush=True)
        return _exit_for(d.drive(r))


def _load(store: RolloutStore, group: str) -> Rollout:
    from ota.rollout import RolloutError

    r = store.load(group)
    if r is None:
        raise RolloutError(f"group {group!r} has no rollout in {store.root}")
    return r


def cmd_pause(args: argparse.Namespace) -> int:
    from ota.rollout import RolloutError, RolloutState
    from ota.rollout_store import RolloutBusyError

    store = _store(args)
    r = _load(store, args.group)
    if r.state is RolloutState.PAUSED:
        print(f"rollout {r.id}: already paused")
        return 0
    if r.state is not RolloutState.RUNNING:
        raise RolloutError(f"rollout {r.id} is {r.state.value}: nothing to pause")
    try:
        with store.lock(args.group, "pause"):  # no driver runs: pause it here
            r = _load(store, args.group)
            r.state, r.updated_at = RolloutState.PAUSED, time.time()
            r.note(r.updated_at, "paused (no driver was running)")
            store.save(r)
            print(f"rollout {r.id}: paused; `edge-ota rollout resume` continues it")
            return 0
    except RolloutBusyError:
        pass
    store.request(args.group, "pause", time.time())
    print(f"rollout {r.id}: a driver runs; asked it to pause", flush=True)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        r = _load(store, args.group)
        if r.state is not RolloutState.RUNNING:
            print(f"rollout {r.id}: {r.state.value}")
            return 0 if r.state is RolloutState.PAUSED else 1
        time.sleep(0.5)
    store.clear_request(args.group)
    raise RolloutError(f"the driver did not take the pause request within {args.wait:g} s")


def cmd_abort(args: argparse.Namespace) -> int:
    from ota.rollout_store import RolloutBusyError

    store = _store(args)
    r = _load(store, args.group)
    _abortable(r)
    wait_override = (
        None if args.wave_deadline is None
        else _duration(args.wave_deadline, "--wave-deadline", 0.0)
    )  # fmt: skip
    asked = False
    deadline = time.monotonic() + args.wait
    while True:
        try:
            with store.lock(args.group, "abort"):
                store.clear_request(args.group)
                r = _load(store, args.group)
                _abortable(r)
                d = _driver(args, r)
                wait_s = wait_override or float(r.options["wave_deadline_s"])
                r = d.abort(r, wait_s)
                for rec in r.directed():
                    res = rec.abort or {}
                    print(f"  {rec.device}: {res.get('result')}: {res.get('detail')}")
                print(f"rollout {r.id}: {r.reason}")
                return 1 if r.not_restored() else 0
        except RolloutBusyError:
            if time.monotonic() >= deadline:
                store.clear_request(args.group)
                raise
            if not asked:
                store.request(args.group, "abort", time.time())
                print(f"rollout {r.id}: a driver runs; asked it to stop for the abort", flush=True)
                asked = True
            time.sleep(0.5)


def _abortable(r: Rollout) -> None:
    """A finished rollout has nothing to abort, except an abort that left devices not
    restored: running it again brings those back."""
    from ota.rollout import RolloutError, RolloutState

    if r.state is RolloutState.COMPLETED or (
        r.state is RolloutState.ABORTED and not r.not_restored()
    ):
        raise RolloutError(f"rollout {r.id} is {r.state.value}: nothing to abort")


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _no_driver(r: Rollout) -> str:
    """What to do about a rollout that no process drives now."""
    from ota.rollout import RolloutState

    what = {
        RolloutState.RUNNING: "its driver stopped (killed, or the machine restarted): "
        "`edge-ota rollout resume` continues it, `abort` brings the directed devices back",
        RolloutState.COMPLETING: "its driver stopped while handing the target to the group: "
        "`edge-ota rollout resume` finishes it",
        RolloutState.PAUSED: "`edge-ota rollout resume` continues it",
        RolloutState.HALTED: "`edge-ota rollout abort` brings the directed devices back",
        RolloutState.ABORTING: "its abort was interrupted: `edge-ota rollout abort` again "
        "finishes it",
    }.get(r.state)
    return "none running" + (f"; {what}" if what else "")


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    r = _load(store, args.group)
    holder = store.holder(args.group)
    if args.json:
        doc = r.to_json()
        doc["driver"] = holder
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    t = r.target
    prev = r.previous
    lines = [
        f"rollout {r.id}: group {r.group}, target {t.path} ({t.family} v{t.version})",
        "previous: "
        + (f"{prev['path']} (v{prev.get('version')})" if prev else "none (no group entry)"),
        f"state: {r.state.value}" + (f": {r.reason}" if r.reason else ""),
        "driver: " + (store.describe_holder(holder) if holder is not None else _no_driver(r)),
        f"waves {r.options.get('waves')}; soak {r.options.get('soak_s'):g} s; max failures "
        f"{r.options.get('max_failures')} (allowed {r.allowed_failures}); wave deadline "
        f"{r.options.get('wave_deadline_s'):g} s",
        f"created {_when(r.created_at)}, updated {_when(r.updated_at)}, ended {_when(r.ended_at)}",
    ]
    for w in r.waves:
        lines.append(f"wave {w.index} [{w.state.value}] directed {_when(w.directed_at)}")
        for dev in w.devices:
            rec = r.devices[dev]
            extra = f": {rec.reason}" if rec.reason else ""
            if rec.abort:
                extra += f" (abort: {rec.abort.get('result')}: {rec.abort.get('detail')})"
            lines.append(f"  {dev}  {rec.state.value}{extra}")
    for dev, why in r.skipped.items():
        lines.append(f"skipped {dev}: {why}")
    fails = r.failures()
    lines.append(f"failures: {len(fails)}")
    lines += [f"  {f.device} (wave {f.wave}, {_when(f.failed_at)}): {f.reason}" for f in fails]
    print("\n".join(lines))
    return 0


def _repo_opts(p: argparse.ArgumentParser, *, keys: bool) -> None:
    p.add_argument("--director", type=Path, required=True, help="the director repository")
    p.add_argument("--group", required=True)
    p.add_argument(
        "--state-dir", type=Path, help="rollout state (default: <director>.rollouts beside it)"
    )
    if keys:
        p.add_argument("--image", type=Path, required=True, help="the image repository")
        p.add_argument("--online-key", type=Path, required=True, help="the director's key")


def _broker_opts(p: argparse.ArgumentParser) -> None:
    """As `edge-ota fleet status` takes them."""
    from ota.cli_fleet import add_connection_options

    add_connection_options(p)
    p.add_argument("--poll", metavar="S", help="read the fleet state every S (default 5s)")
    p.add_argument("--offline-after", metavar="S", help="silent this long = offline (default 900s)")


def add_rollout_commands(sub: Any) -> None:
    p = sub.add_parser("rollout", help="staged rollouts through the director (docs/fleet.md)")
    ps = p.add_subparsers(dest="rollout_command", required=True)
    s = ps.add_parser("start", help="plan waves and drive them in the foreground")
    _repo_opts(s, keys=True)
    s.add_argument("--target", required=True, help="image target path, as `repo add` printed")
    s.add_argument("--waves", required=True, help="cumulative sizes, e.g. 2,20%%,100%%")
    s.add_argument("--soak", default="0", help="after a wave's last success (10m, 30s, S)")
    s.add_argument("--max-failures", default="0", help="N or P%% of planned; more halt it")
    s.add_argument("--min-devices", type=int, default=1, help="refuse with fewer online")
    s.add_argument("--wave-deadline", default="30m", help="no success by then = failed")
    _broker_opts(s)
    s.set_defaults(func=_guard(cmd_start))
    x = ps.add_parser("status", help="the rollout as persisted")
    _repo_opts(x, keys=False)
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=_guard(cmd_status))
    x = ps.add_parser("pause", help="stop directing further waves (a running driver stops)")
    _repo_opts(x, keys=False)
    x.add_argument("--wait", type=float, default=REQUEST_WAIT_S, metavar="S")
    x.set_defaults(func=_guard(cmd_pause))
    x = ps.add_parser("resume", help="drive a paused or interrupted rollout on")
    _repo_opts(x, keys=True)
    _broker_opts(x)
    x.set_defaults(func=_guard(cmd_resume))
    x = ps.add_parser("abort", help="bring every directed device back to the previous model")
    _repo_opts(x, keys=True)
    _broker_opts(x)
    x.add_argument(
        "--wave-deadline", help="how long to wait for the devices (default: the rollout's)"
    )
    x.add_argument("--wait", type=float, default=REQUEST_WAIT_S, metavar="S",
                   help="how long to wait for a running driver to stop")  # fmt: skip
    x.set_defaults(func=_guard(cmd_abort))


def _guard(fn: Any) -> Any:
    """A malformed option exits 2 with its message; Ctrl-C leaves the rollout resumable."""

    def run(args: argparse.Namespace) -> int:
        from ota.cli_fleet import quiet_broken_pipe
        from ota.rollout import RolloutUsageError

        try:
            return int(fn(args))
        except RolloutUsageError as e:
            print(f"edge-ota: error: {e}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            return quiet_broken_pipe()
        except KeyboardInterrupt:
            print(
                "edge-ota: interrupted; the rollout's state is kept: "
                "`edge-ota rollout resume` continues it",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED

    return run
