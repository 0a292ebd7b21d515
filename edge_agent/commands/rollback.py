"""`edge-agent rollback`: the technician's manual rollback to the previous model slot.

With no previous slot, the active slot is dropped and the agent's bundled model serves.
With the agent stopped, the slots change here, on the state dir. With it running, the
agent does it (it owns the slot state; see edge_agent/updates/manual_rollback.py): this command
asks, waits for the answer and prints it; the streams switch model without a restart
and without losing a window. While an update is in progress the rollback is refused
(docs/ota.md). A slot the agent rolled back for cause (failed trial) is refused, saying
why, unless --force. Run with sudo, every file it creates is given to the state dir's owner
(the agent's user), so the agent never meets a file it cannot use.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.commands.status import add_state_dir_args, read_snapshot, resolve_state_dir
from edge_agent.updates.slots import AT_REST

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rollback",
        help="serve the previous model slot again (manual rollback)",
        description="Switch the active model slot back to the previous one.",
    )
    add_state_dir_args(p)
    p.add_argument("--reason", default="manual rollback by a technician")
    p.add_argument(
        "--force",
        action="store_true",
        help="serve the previous slot even if the agent rolled it back for cause",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_rollback)


def _rollback(args: argparse.Namespace) -> int:
    from edge_agent.errors import StateError

    state_dir = resolve_state_dir(args.state_dir, args.config)
    snap = read_snapshot(state_dir)
    pid = snap.state.get("pid") if snap.state else None
    running = bool(snap.state and snap.state.get("running") and snap.pid_alive)
    from edge_agent.ownership import as_state_dir_owner

    try:
        # Run as root (sudo), whatever this writes goes to the state dir's owner, so the
        # agent can still take, replace and remove it.
        with as_state_dir_owner(state_dir):
            return _rollback_in(state_dir, args, pid, running)
    except OSError as e:  # e.g. a user who may not write the agent's state dir
        raise StateError(
            f"{state_dir}: {e.strerror or e}: run as the agent's user or with sudo"
        ) from e


def _rollback_in(state_dir: Path, args: argparse.Namespace, pid: Any, running: bool) -> int:
    from edge_agent.errors import StateError

    if running:
        answer = _ask_agent(state_dir, args.reason, pid, force=args.force)
        if not answer.get("ok"):
            raise StateError(str(answer.get("message", "refused")))
        done = {
            "rolled_back_from": answer.get("rolled_back_from"),
            "result": str(answer.get("message", "")),
            "note": f"applied by the running agent (pid {pid}): no restart needed",
        }
    else:
        done = _offline(state_dir, args.reason, force=args.force)
    if args.json:
        print(json.dumps(done))
    else:
        print(f"{done['result']}; {done['note']}")
    return 0


def _ask_agent(state_dir: Path, reason: str, pid: Any, *, force: bool) -> dict[str, Any]:
    import time

    from edge_agent.updates import manual_rollback as mr

    req = mr.submit(state_dir, reason, time.time(), force=force)
    wait_s = mr.STALE_AFTER_S + 5.0
    answer = mr.wait_result(state_dir, req, wait_s)
    if answer is None:
        # not taken: withdraw it, so it cannot happen later behind the technician's back
        (state_dir / mr.REQUEST_FILE).unlink(missing_ok=True)
        return {
            "ok": False,
            "message": f"the agent (pid {pid}) did not answer in {wait_s:.0f} s;"
            " nothing was rolled back (is it busy with an update? see edge-agent status)",
        }
    return answer


def _offline(state_dir: Path, reason: str, *, force: bool) -> dict[str, Any]:
    from edge_agent.errors import StateError
    from edge_agent.updates.store import SlotStore

    store = SlotStore(state_dir)
    now = datetime.now(timezone.utc)
    if store.state.phase not in AT_REST:
        store.recover(now)  # what the agent would do on start: finish the crash recovery
    st = store.state
    if st.active is None:
        raise StateError("no OTA model is active: the bundled model already serves")
    before = st.active_version
    new = store.step_back(reason, now, force=force)
    served = (
        f"slot {new.active.value} v{new.active_version} serves"
        if new.active is not None
        else "no previous slot: the bundled model serves"
    )
    return {
        "rolled_back_from": before,
        "result": f"rolled back from v{before}: {served}",
        "note": "takes effect when the agent starts",
    }
