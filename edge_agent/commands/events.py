"""`edge-agent events`: what the agent raised (anomaly start/end, sensor events), with
the sample times that decided them, from the local event history in the state dir.

Reads `<state_dir>/events.jsonl` only (edge_agent/reporting/history.py): it answers at
once, works while the agent is stopped, and lists events also after the broker took
them out of the outbox.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

from edge_agent.commands.status import add_state_dir_args, resolve_state_dir
from edge_agent.errors import ConfigError

__all__ = ["parse_since", "register"]

CSV_FIELDS = (
    "t_sample",
    "time_utc",
    "kind",
    "event",
    "stream",
    "score",
    "peak_score",
    "threshold",
    "model",
    "model_version",
    "duration_s",
    "condition",
    "channel",
    "detail",
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "events",
        help="list anomaly and sensor events with their sample times (local history)",
        description="List what the agent raised, oldest first, from "
        "<state_dir>/events.jsonl (kept after delivery; the newest 1-2 MiB).",
    )
    add_state_dir_args(p)
    p.add_argument(
        "--since",
        help="only events whose sample time is at or after this: epoch seconds, "
        "ISO 8601 (2026-03-01T12:00), or an age such as 30m, 12h, 7d",
    )
    p.add_argument("--stream", help="only this stream")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array of the records")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.set_defaults(func=_events)


def parse_since(text: str, now: float) -> float:
    """Epoch seconds from `--since`; ConfigError if it is none of the accepted forms."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: expected epoch seconds, ISO 8601 (2026-03-01T12:00) "
            "or an age such as 30m, 12h, 7d"
        ) from None
    return dt.timestamp()


def _utc(t: Any) -> str:
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return ""
    try:
        return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):  # a damaged record: no such time
        return ""


def _num(v: Any) -> str:
    """A score or threshold in 5 significant digits (never cut: 21445, 1.2346e+06)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.5g}"
    return "?"


def _line(r: dict[str, Any]) -> str:
    head = f"{_utc(r.get('t_sample'))}  {r.get('stream', '?'):<12} "
    if r.get("kind") == "sensor":
        where = f"/{r['channel']}" if r.get("channel") else ""
        return f"{head}sensor {r.get('condition')}{where} {r.get('event')}: {r.get('detail', '')}"
    text = f"{head}anomaly {r.get('event'):<5} "
    if r.get("event") == "start":
        text += f"score {_num(r.get('score'))} "
    else:
        text += f"peak score {_num(r.get('peak_score'))} "
        if isinstance(r.get("duration_s"), (int, float)):
            text += f"after {r['duration_s']:.1f} s "
    return (
        text + f"(threshold {_num(r.get('threshold'))}, {r.get('model')} v{r.get('model_version')})"
    )


def _events(args: argparse.Namespace) -> int:
    from edge_agent.reporting.history import read_history

    state_dir = resolve_state_dir(args.state_dir, args.config)
    if not state_dir.is_dir():
        what = "not a directory" if state_dir.exists() else "no such state directory"
        print(f"edge-agent: {state_dir}: {what}", file=sys.stderr)
        return 1
    since = parse_since(args.since, time.time()) if args.since else None
    try:
        history = list(read_history(state_dir))
    except OSError as e:
        print(f"edge-agent: {state_dir}: cannot read the event history: {e}", file=sys.stderr)
        return 1
    recs = [
        r
        for r in history
        if (args.stream is None or r.get("stream") == args.stream)
        and (
            since is None
            or (isinstance(r.get("t_sample"), (int, float)) and r["t_sample"] >= since)
        )
    ]
    if args.json:
        print(json.dumps(recs, indent=1))
    elif args.csv:
        w = csv.DictWriter(sys.stdout, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in recs:
            w.writerow({**r, "time_utc": _utc(r.get("t_sample"))})
    elif not recs:
        print(
            f"no events in {state_dir}" + (" matching the filter" if since or args.stream else "")
        )
    else:
        for r in recs:
            print(_line(r))
    return 0
