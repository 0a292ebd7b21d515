"""`edge-ota fleet status|watch|cmd`: the fleet view and remote commands (docs/fleet.md).

`status` reads the retained device state from the broker once; `watch` keeps reading and
prints the view every `--interval` seconds; `cmd` sends a remote command to devices and
collects the replies. Exit codes: 0 success, 1 a device failed or did not answer (or the
broker cannot be reached), 2 bad usage.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeAgentError

__all__ = [
    "add_connection_options",
    "add_fleet_commands",
    "connection_from_args",
    "quiet_broken_pipe",
]

DEFAULT_OFFLINE_AFTER_S = 900.0  # three health heartbeats (HEARTBEAT_S = 300)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a CLI killed by it


class FleetUsageError(EdgeAgentError):
    """A `fleet` argument is invalid (exit 2)."""


def _positive(text: str) -> float:
    """A number of seconds above 0 (argparse names the option and exits 2 otherwise): a
    timeout or an offline limit of 0 or less would judge every device at once."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0 seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def connection_from_args(args: argparse.Namespace) -> Any:
    """The BrokerOptions that `add_connection_options` parsed (fleet, rollout)."""
    from ota.fleet_mqtt import BrokerOptions

    return BrokerOptions(
        host=args.host,
        port=args.port,
        prefix=args.prefix,
        username=args.username,
        password_file=args.password_file,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        protocol=args.mqtt_protocol,
    )


def _view(args: argparse.Namespace, messages: list[tuple[str, bytes]]) -> Any:
    from ota.fleet import build_view

    return build_view(args.prefix, messages, time.time(), args.offline_after, args.group)


def cmd_status(args: argparse.Namespace) -> int:
    from ota.fleet import render_table
    from ota.fleet_mqtt import read_retained

    t0 = time.monotonic()
    opts = connection_from_args(args)
    messages, how = read_retained(opts, quiet_s=args.quiet, max_s=args.max_wait)
    view = _view(args, messages)
    took = time.monotonic() - t0
    if args.json:
        doc = view.to_json()
        doc["read"] = {"messages": len(messages), "ended_by": how, "seconds": round(took, 3)}
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_table(view))
        print(f"(read {len(messages)} retained messages in {took:.2f} s, ended by {how})")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from ota.fleet import render_table
    from ota.fleet_mqtt import FleetClient, device_filters, read_retained

    opts = connection_from_args(args)
    first, _ = read_retained(opts, quiet_s=args.quiet, max_s=args.max_wait)
    latest: dict[str, bytes] = dict(first)
    lock = threading.Lock()

    def on_message(msg: Any) -> None:
        with lock:
            latest[msg.topic] = bytes(msg.payload)

    shown = 0
    with FleetClient(opts, on_message) as fc:
        # then changes only (MQTT 5): not the whole fleet's retained state a second time
        fc.subscribe(device_filters(args.prefix), retained=False)
        while args.count is None or shown < args.count:
            time.sleep(args.interval)
            with lock:
                items = list(latest.items())
            view = _view(args, items)
            if sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")
            print(json.dumps(view.to_json(), sort_keys=True) if args.json else render_table(view))
            print(flush=True)
            shown += 1
    return 0


def _params(args: argparse.Namespace) -> bytes:
    """`key=value` pairs (a value is JSON if it parses, else a string), or --params."""
    obj: dict[str, Any] = {}
    if args.params:
        try:
            loaded = json.loads(args.params)
        except ValueError as e:
            raise FleetUsageError(f"--params: not JSON: {e}") from e
        if not isinstance(loaded, dict):
            raise FleetUsageError("--params: expected a JSON object")
        obj.update(loaded)
    for kv in args.args:
        key, sep, val = kv.partition("=")
        if not sep or not key:
            raise FleetUsageError(f"{kv!r}: expected key=value")
        try:
            obj[key] = json.loads(val)
        except ValueError:
            obj[key] = val
    return json.dumps(obj).encode()


def _targets(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Devices to send to, and those of the group skipped because they are offline."""
    if args.device:
        return list(dict.fromkeys(args.device)), []
    from ota.fleet_mqtt import read_retained

    messages, _ = read_retained(connection_from_args(args), quiet_s=args.quiet, max_s=args.max_wait)
    view = _view(args, messages)
    online = [r.device for r in view.rows if not r.offline]
    return online, [r.device for r in view.rows if r.offline]


def _save_bundle(out: Path, device: str, parts: list[dict[str, Any]]) -> str:
    res = sorted((p["result"] for p in parts if p.get("ok")), key=lambda r: int(r["chunk"]))
    data = b"".join(base64.b64decode(r["data"]) for r in res)
    if hashlib.sha256(data).hexdigest() != res[0]["sha256"]:
        return "support bundle damaged in transit (sha256 mismatch)"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device}-support.json.gz"
    path.write_bytes(data)
    return f"support bundle {len(data)} bytes in {len(res)} chunk(s) -> {path}"


def _summary(name: str, parts: list[dict[str, Any]]) -> str:
    first = parts[0]
    if not first.get("ok"):
        return f"error: {first.get('error')}"
    res = first.get("result") or {}
    if name == "logs":
        return "\n".join(["ok:", *(f"  {x}" for x in res.get("lines", []))])
    if name == "status":
        return f"ok: {res.get('summary') or res.get('verdict')}"
    return "ok: " + json.dumps(res, sort_keys=True)


def cmd_cmd(args: argparse.Namespace) -> int:
    from ota.fleet_mqtt import send_command

    if bool(args.device) == bool(args.group):
        raise FleetUsageError("give --device D (repeatable) or --group G")
    payload = _params(args)
    devices, skipped = _targets(args)
    if not devices:
        print(f"no online device in group {args.group!r}", file=sys.stderr)
        return 1
    got = send_command(connection_from_args(args), devices, args.name, payload, args.timeout)
    failed = 0
    doc: dict[str, Any] = {"command": args.name, "devices": {}, "skipped_offline": skipped}
    for d in devices:
        parts = got.replies.get(d) or []
        done = got.complete(d)
        ok = done and all(p.get("ok") for p in parts)
        failed += not ok
        if not parts:
            line = f"no reply in {args.timeout:g} s"
        elif args.name == "support-bundle" and ok:
            line = _save_bundle(args.out, d, parts)
        elif not done:
            line = f"incomplete: {len(parts)} part(s) in {args.timeout:g} s"
        else:
            line = _summary(args.name, parts)
        doc["devices"][d] = {"ok": ok, "replies": parts if args.json else None, "text": line}
        if not args.json:
            print(f"{d}: {line}")
    for d in skipped:
        if not args.json:
            print(f"{d}: offline, not sent")
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    return 1 if failed else 0


def add_connection_options(p: argparse.ArgumentParser) -> None:
    """The broker connection options every fleet-facing command takes (fleet, rollout)."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default="edge", help="topic prefix (mqtt.prefix of the devices)")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, help="file holding the MQTT password")
    p.add_argument("--ca-file", type=Path, help="CA for TLS (turns TLS on)")
    p.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--key-file", type=Path, help="client key (mutual TLS)")
    p.add_argument("--mqtt-protocol", choices=("5", "3.1.1"), default="5")


def _broker_opts(p: argparse.ArgumentParser) -> None:
    add_connection_options(p)
    p.add_argument(
        "--offline-after",
        type=_positive,
        default=DEFAULT_OFFLINE_AFTER_S,
        metavar="S",
        help="a device with nothing newer than S seconds is offline (default 900)",
    )
    p.add_argument(
        "--quiet",
        type=_positive,
        default=1.0,
        metavar="S",
        help="reading ends after S s with nothing new if the sentinel does not come",
    )
    p.add_argument("--max-wait", type=_positive, default=60.0, metavar="S", help="read at most S s")


def add_fleet_commands(sub: Any) -> None:
    f = sub.add_parser("fleet", help="the fleet view and remote commands (docs/fleet.md)")
    fsub = f.add_subparsers(dest="fleet_command", required=True)
    s = fsub.add_parser("status", help="one line per device from the retained state")
    _broker_opts(s)
    s.add_argument("--group", help="only this group")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    w = fsub.add_parser("watch", help="status, refreshed every --interval seconds")
    _broker_opts(w)
    w.add_argument("--group")
    w.add_argument("--json", action="store_true")
    w.add_argument("--interval", type=_positive, default=5.0, metavar="S")
    w.add_argument("--count", type=_count, help="stop after N refreshes")
    w.set_defaults(func=cmd_watch)
    c = fsub.add_parser("cmd", help="send a remote command and collect the replies")
    _broker_opts(c)
    c.add_argument("--device", action="append", default=[], help="device id (repeatable)")
    c.add_argument("--group", help="every online device of this group")
    c.add_argument("name", help="status, rollback, calibrate, logs, support-bundle, rebirth, ping")
    c.add_argument("args", nargs="*", help="parameters as key=value (value: JSON or text)")
    c.add_argument("--params", help="parameters as one JSON object")
    c.add_argument("--timeout", type=_positive, default=15.0, metavar="S")
    c.add_argument("--out", type=Path, default=Path("."), help="where support bundles go")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_usage_guard(cmd_cmd))
    for p in (s, w):
        p.set_defaults(func=_usage_guard(p.get_default("func")))


def quiet_broken_pipe() -> int:
    """The reader of stdout went away (`... | head`): stop quietly, as CLIs do. stdout
    is pointed at /dev/null so the flush at exit does not complain again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _usage_guard(fn: Any) -> Any:
    """FleetUsageError is bad usage: exit 2 with the message (edge-ota's convention)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except FleetUsageError as e:
            print(f"edge-ota: error: {e}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # `fleet status | head`
            return quiet_broken_pipe()

    return run
