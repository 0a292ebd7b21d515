"""`edge-agent rollback`: the technician's manual rollback to the previous model slot.

Works on the state dir alone (the agent may be stopped). With no previous slot, the active
slot is dropped and the agent's bundled model serves. A running agent keeps serving what
it loaded until it restarts (`systemctl restart edge-agent`); while it is in the middle of
an update the rollback is refused (docs/ota.md).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from edge_agent.commands.status import DEFAULT_CONFIG, read_snapshot, resolve_state_dir

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rollback",
        help="serve the previous model slot again (manual rollback)",
        description="Switch the active model slot back to the previous one.",
    )
    p.add_argument("--state-dir", help="state directory (default: from config)")
    p.add_argument(
        "--config", help=f"config file to take state_dir from (default: {DEFAULT_CONFIG})"
    )
    p.add_argument("--reason", default="manual rollback by a technician")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_rollback)


def _rollback(args: argparse.Namespace) -> int:
    from edge_agent.errors import StateError
    from edge_agent.slots import AT_REST
    from edge_agent.store import SlotStore

    state_dir = resolve_state_dir(args.state_dir, args.config)
    snap = read_snapshot(state_dir)
    pid = snap.state.get("pid") if snap.state else None
    running = bool(snap.state and snap.state.get("running") and snap.pid_alive)
    store = SlotStore(state_dir)
    now = datetime.now(timezone.utc)
    if store.state.phase not in AT_REST:
        if running:
            raise StateError(
                f"the agent (pid {pid}) is in the middle of an update "
                f"({store.state.phase.value}); wait for it to finish, or stop the agent"
            )
        store.recover(now)  # what the agent would do on start: finish the crash recovery
    st = store.state
    if st.active is None:
        raise StateError("no OTA model is active: the bundled model already serves")
    before = st.active_version
    if st.previous is not None:
        new = store.rollback(args.reason, now)
        done = f"slot {new.active.value if new.active else '-'} v{new.active_version} serves"
    else:
        store.fall_back(args.reason, now)
        done = "no previous slot: the bundled model serves"
    note = (
        f"the agent (pid {pid}) keeps its current model until restarted "
        "(systemctl restart edge-agent)"
        if running
        else "takes effect when the agent starts"
    )
    if args.json:
        print(json.dumps({"rolled_back_from": before, "result": done, "note": note}))
    else:
        print(f"rolled back from v{before}: {done}; {note}")
    return 0
