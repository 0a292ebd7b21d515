"""`edge-agent models`: the OTA model slots of this device, for the technician.

Reads `<state_dir>/slots.json` and the slots' stored manifests only (no model is loaded),
so it answers at once and works while the agent is stopped. Exit 0, or 1 if the active
slot fails its integrity check (size, sha256 against its verified manifest).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from edge_agent.commands.status import add_state_dir_args, resolve_state_dir

__all__ = ["register", "slots_report"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="OTA model slots: versions, signers, commit state, last result",
        description="Show the A/B model slots from <state_dir>/slots.json.",
    )
    add_state_dir_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_models)


def slots_report(state_dir: Any) -> dict[str, Any]:
    from edge_agent.updates.slots import Slot
    from edge_agent.updates.store import SlotStore

    store = SlotStore(state_dir)
    st = store.state
    slots = []
    for slot in Slot:
        m = store.manifest(slot)
        present = store.slot_dir(slot).is_dir()
        role = (
            "active"
            if st.active is slot
            else "previous"
            if st.previous is slot
            else "candidate"
            if st.candidate is slot
            else ""
        )
        slots.append(
            {
                "slot": slot.value,
                "role": role,
                "present": present,
                "version": st.versions.get(slot),
                "name": m.name if m else None,
                "family": m.family if m else None,
                "label": m.label if m else None,
                "profiles": list(m.profiles) if m else [],
                "signers": list(store.signers(slot)),
                "intact": (store.check_slot(slot) is None) if m and present else None,
            }
        )
    d = st.to_dict()
    return {
        "state_dir": str(state_dir),
        "phase": d["phase"],
        "active": d["active"],
        "previous": d["previous"],
        "candidate": d["candidate"],
        "committed": d["committed"],
        "highest_committed_version": d["highest_committed_version"],
        "last_result": d["last_result"],
        "serving": "slot " + d["active"] if d["active"] else "bundled model",
        "slots": slots,
        "history": d["history"][-10:],
        "calibrations": calibrations_report(state_dir),
    }


def calibrations_report(state_dir: Any) -> list[dict[str, Any]]:
    """On-site calibrations in `<state_dir>/calibration/` (read as JSON: no numpy here).
    Each names the model (and sha256) it was fitted for; the agent ignores one whose
    model has changed."""
    from pathlib import Path

    out = []
    for p in sorted((Path(state_dir) / "calibration").glob("*.json")):
        try:
            d = json.loads(p.read_text())
            out.append(
                {
                    "stream": d["stream"],
                    "model": d["model_name"],
                    "model_version": d["model_version"],
                    "model_sha256": d["model_sha256"],
                    "threshold": d["threshold"],
                    "windows": d["n_windows"],
                    "created": d["created"],
                    "file": str(p),
                }
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append({"file": str(p), "error": f"unreadable: {e}"})
    return out


def _models(args: argparse.Namespace) -> int:
    from edge_agent.errors import StateError

    state_dir = resolve_state_dir(args.state_dir, args.config)
    if not state_dir.is_dir():  # a typo must not read as "no model installed"
        raise StateError(f"state dir {state_dir} does not exist or is not a directory")
    rep = slots_report(state_dir)
    active = next((s for s in rep["slots"] if s["role"] == "active"), None)
    rc = 1 if active is not None and active["intact"] is False else 0
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True))
        return rc
    print(f"state dir: {rep['state_dir']}")
    print(
        f"serving:   {rep['serving']}; phase {rep['phase']}; "
        f"{'committed' if rep['committed'] else 'not committed'}; "
        f"highest committed v{rep['highest_committed_version']}"
    )
    for s in rep["slots"]:
        if not s["present"] and s["version"] is None:
            print(f"slot {s['slot']}:    empty")
            continue
        signers = ", ".join(k[:12] for k in s["signers"]) or "-"
        intact = {True: "intact", False: "CORRUPT", None: "unchecked"}[s["intact"]]
        print(
            f"slot {s['slot']}:    {s['role'] or 'spare'}: {s['name']} v{s['version']} "
            f"({intact}; signed by {signers})"
        )
    if rep["last_result"]:
        print(f"last:      {rep['last_result']}")
    for c in rep["calibrations"]:
        if "error" in c:
            print(f"calibration {c['file']}: {c['error']}")
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["created"]))
        print(
            f"calibrated [{c['stream']}]: {c['model']} v{c['model_version']}, threshold "
            f"{c['threshold']:.4g} from {c['windows']} windows, {when}"
        )
    return rc
