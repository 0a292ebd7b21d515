"""Manual rollback while the agent runs: the CLI asks, the agent does it.

The running agent owns `slots.json`: it keeps the slot state in memory and writes it at
every OTA step. A CLI writing the file beside it would be overwritten by the agent's
next write, so the rollback would be silently undone (and the next update would
install over the slot it restored). So while the agent runs, `edge-agent rollback`
only drops a request file; the agent takes it within a tick, between OTA steps, rolls
the slots back itself, swaps the affected streams to the restored model at a batch
boundary (no window lost, an open alarm stays open) and writes the result, which the
CLI prints. With the agent stopped the CLI changes the slots directly, as before.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import StreamConfig
from edge_agent.errors import EdgeAgentError, StateError
from edge_agent.fsutil import atomic_write_json, read_json
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.streams import with_calibration
from edge_agent.updates.slots import AT_REST

if TYPE_CHECKING:  # the slot store pulls in the OTA package: only where OTA is on
    from edge_agent.updates.boot import SlotBoot

__all__ = [
    "REQUEST_FILE",
    "RESULT_FILE",
    "STALE_AFTER_S",
    "Request",
    "ServedStream",
    "perform",
    "submit",
    "take",
    "wait_result",
    "write_result",
]

log = logging.getLogger(__name__)

REQUEST_FILE = "ota/rollback-request.json"
RESULT_FILE = "ota/rollback-result.json"
# A request the agent could not take this long (busy with an update's trial) is refused
# rather than carried out later, when the technician has stopped waiting for it.
STALE_AFTER_S = 30.0


@dataclass(frozen=True)
class Request:
    id: str
    reason: str
    created: float
    force: bool = False  # serve a slot the agent rolled back for cause anyway


@dataclass(frozen=True)
class ServedStream:
    """A stream the rollback may re-point: what `perform` needs of it."""

    name: str
    pipeline: StreamPipeline
    config: StreamConfig
    bundled_dir: Path


def submit(state_dir: Path, reason: str, now: float, *, force: bool = False) -> Request:
    """Drop a request for the running agent. Run as root, the request is handed to the
    state dir's owner before the agent can see it, so the agent can remove it."""
    from edge_agent.ownership import adopt_new_entries

    req = Request(uuid.uuid4().hex, reason, now, force)
    path = Path(state_dir) / REQUEST_FILE
    path.parent.mkdir(exist_ok=True)
    adopt_new_entries(Path(state_dir))  # ota/ itself, if this created it
    body = json.dumps({"id": req.id, "reason": reason, "created": now, "force": force}).encode()
    # Written beside the target and adopted before the rename: the agent never sees a
    # request owned by root.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(body)
    adopt_new_entries(Path(state_dir))
    os.replace(tmp, path)
    return req


def take(state_dir: Path) -> Request | None:
    """The pending request, removed from disk; None if there is none. A malformed one is
    removed too, and answered, so the CLI does not wait for nothing."""
    path = Path(state_dir) / REQUEST_FILE
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        path.unlink(missing_ok=True)
        log.warning("rollback request %s unreadable, dropped: %s", path, e)
        return None
    path.unlink(missing_ok=True)
    try:
        return Request(
            str(raw["id"]), str(raw["reason"]), float(raw["created"]), raw.get("force") is True
        )
    except (TypeError, KeyError, ValueError):
        log.warning("rollback request %s malformed, dropped: %r", path, raw)
        return None


def write_result(state_dir: Path, req: Request, ok: bool, message: str, **extra: Any) -> None:
    body = {"id": req.id, "ok": ok, "message": message, **extra}
    atomic_write_json(Path(state_dir) / RESULT_FILE, body)


def wait_result(
    state_dir: Path, req: Request, timeout: float, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any] | None:
    """The agent's answer to `req`, or None after `timeout` seconds."""
    path = Path(state_dir) / RESULT_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = read_json(path)
        except (OSError, ValueError):
            raw = None  # not there yet, or being replaced
        if isinstance(raw, dict) and raw.get("id") == req.id:
            return raw
        sleep(0.1)
    return None


def perform(
    boot: SlotBoot,
    streams: Sequence[ServedStream],
    profile: Profile,
    req: Request,
    now: datetime,
) -> tuple[int, str]:
    """Roll the slots back and re-point the streams the slot served. Returns the version
    rolled back from and what serves now; StateError when it cannot be done."""
    if now.timestamp() - req.created > STALE_AFTER_S:
        raise StateError(
            f"request is {now.timestamp() - req.created:.0f} s old (the agent was busy "
            "with an update): not carried out, ask again"
        )
    store = boot.store
    st = store.state
    if st.phase not in AT_REST:
        raise StateError(f"the agent is in the middle of an update ({st.phase.value})")
    manifest = store.active_manifest()
    if st.active is None or manifest is None:
        raise StateError("no OTA model is active: the bundled model already serves")
    before = st.active_version or 0
    store.step_back(req.reason, now, force=req.force)
    served = []
    for s in streams:
        if s.pipeline.model.card.family != manifest.family:
            continue
        try:
            model = boot.load(s.bundled_dir, profile, s.name)  # the slot's, else bundled
        except EdgeAgentError as e:  # even the bundled model: keep what serves
            log.error("stream %s: after the rollback no model loads (%s); unchanged", s.name, e)
            continue
        model, _cal, policy = with_calibration(Path(store.root), s.config, model)
        s.pipeline.swap_model(model, policy)
        served.append(f"{s.name}: {model.description} ({boot.sources.get(s.name, '?')})")
    return before, "; ".join(served) or "no stream serves that model family"
