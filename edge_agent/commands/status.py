"""`edge-agent status`: the verdict on a running (or not running) agent, from its state dir.

Reads only `<state_dir>/status.json` (and, to find the state dir, the `state_dir`
key of the config file), so it answers at once even when the agent hangs.
Exit code: 0 OK, 1 DEGRADED, 3 DOWN, 2 bad usage (docs/status.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.config import DEFAULT_STATE_DIR, default_state_dir, user_state_dir
from edge_agent.errors import ConfigError
from edge_agent.service.status import STATUS_FILE, Snapshot, assess
from edge_agent.service.status_render import render_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

__all__ = ["DEFAULT_CONFIG", "pid_alive", "read_snapshot", "register", "resolve_state_dir"]

DEFAULT_CONFIG = "/etc/edge-agent/agent.toml"
DEFAULT_WATCH_S = 2.0
MAX_STATUS_BYTES = 4 * 1024 * 1024  # a status file larger than this is not ours
CLEAR = "\x1b[H\x1b[2J"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="is the agent healthy? (exit 0 OK, 1 DEGRADED, 3 DOWN)",
        description="Show the agent's health from <state_dir>/status.json. "
        "Exit code: 0 OK, 1 DEGRADED, 3 DOWN, 2 bad usage.",
    )
    add_state_dir_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--watch", nargs="?", type=float, const=DEFAULT_WATCH_S, default=None, metavar="SECS",
        help=f"refresh in place every SECS (default {DEFAULT_WATCH_S:g}) until Ctrl-C",
    )  # fmt: skip
    p.set_defaults(func=_status)


def add_state_dir_args(p: Any) -> None:
    """--state-dir and --config, as the read-the-state commands share them
    (resolved by `resolve_state_dir`)."""
    p.add_argument(
        "--state-dir", help=f"state directory (default: from config, else {DEFAULT_STATE_DIR})"
    )
    p.add_argument(
        "--config",
        help=f"config file to take state_dir from (default: {DEFAULT_CONFIG} if present)",
    )


def resolve_state_dir(state_dir: str | None, config: str | None) -> Path:
    """--state-dir, else the config's state_dir, else the default config's, else the
    default dir that holds a status file (the service's, then the user's).

    Only the one key is read (no full validation): status must work even while the
    config is being fixed.
    """
    if state_dir:
        return Path(state_dir)
    path = Path(config or DEFAULT_CONFIG)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is fine
    except FileNotFoundError:
        if config:
            raise ConfigError(f"{path}: no such file") from None
        return _default_dir()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        if config:
            raise ConfigError(f"{path}: cannot read state_dir: {e}") from e
        return _default_dir()
    sd = data.get("state_dir", DEFAULT_STATE_DIR)
    if not isinstance(sd, str) or not sd:
        raise ConfigError(f"{path.name}: state_dir: expected a non-empty string")
    return Path(sd)


def _default_dir() -> Path:
    # A technician is usually not the service user: /var/lib/edge-agent is readable
    # but not writable for them, so look for the file rather than for write access.
    for d in (Path(DEFAULT_STATE_DIR), user_state_dir()):
        if (d / STATUS_FILE).exists():
            return d
    return default_state_dir()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the agent runs as edge-agent)
    return True


def read_snapshot(state_dir: Path) -> Snapshot:
    path = state_dir / STATUS_FILE
    sd = str(state_dir)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_STATUS_BYTES + 1)
    except FileNotFoundError:
        return Snapshot(sd, exists=False)
    except OSError as e:
        return Snapshot(sd, exists=True, error=f"{e.strerror or e} ({path})")
    if len(raw) > MAX_STATUS_BYTES:
        return Snapshot(sd, exists=True, error=f"larger than {MAX_STATUS_BYTES} bytes")
    try:
        state = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return Snapshot(sd, exists=True, error=f"not valid JSON: {e}")
    if not isinstance(state, dict):
        return Snapshot(sd, exists=True, error="not a JSON object")
    pid = state.get("pid")
    alive = pid_alive(pid) if isinstance(pid, int) and not isinstance(pid, bool) else None
    try:
        free: int | None = shutil.disk_usage(state_dir).free  # what a non-root user may use
    except OSError:
        free = None
    return Snapshot(sd, exists=True, state=state, pid_alive=alive, free_bytes=free)


def _once(state_dir: Path, as_json: bool) -> tuple[str, int]:
    snap = read_snapshot(state_dir)
    now = time.time()
    a = assess(snap, now)
    if as_json:
        doc = {
            "verdict": a.verdict.value,
            "exit_code": a.exit_code,
            "reasons": list(a.reasons),
            "notes": list(a.notes),
            "stale": a.stale,
            "age_s": a.age_s,
            "state_dir": str(state_dir),
            "error": snap.error,
            "state": snap.state,
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n", a.exit_code
    return render_text(snap, a, now), a.exit_code


def _status(args: argparse.Namespace) -> int:
    if args.watch is not None and args.watch <= 0:
        raise ConfigError("--watch: expected a positive number of seconds")
    state_dir = resolve_state_dir(args.state_dir, args.config)
    text, rc = _once(state_dir, args.json)
    if args.watch is None:
        sys.stdout.write(text)
        return rc
    try:
        while True:
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(f"{CLEAR}{text}(every {args.watch:g} s, {stamp}; Ctrl-C to quit)\n")
            sys.stdout.flush()
            time.sleep(args.watch)
            text, rc = _once(state_dir, args.json)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return rc
