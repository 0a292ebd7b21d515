"""The remote commands an operator sends on `<prefix>/<device>/cmd/<name>` (docs/fleet.md).

`status`, `rollback`, `calibrate`, `logs`, `support-bundle`; `ping` and `rebirth` are the
reporter's own; `calibrate` is service/remote_calibration.py's (it hands requests to the
running streams), given to RemoteCommands by the wiring. Each handler checks its
parameters first and refuses anything it does not know (CommandError: an error reply,
nothing changed). `rollback` goes through the same request file as `edge-agent rollback`
on the device, so the agent applies the same refusal rules at a safe point of its tick.
`status` reads the status.json the agent writes each second. No handler changes the
agent's live objects from the MQTT thread: `calibrate` only hands a request to a stream,
which its own thread takes up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from edge_agent.errors import EdgeAgentError
from edge_agent.reporting.commands import CommandHandler, MultiPart
from edge_agent.service.log_ring import LogRing
from edge_agent.service.status import Snapshot, assess, summary_line

__all__ = [
    "COMMANDS",
    "DEFAULT_LOG_LINES",
    "MAX_LOG_BYTES",
    "MAX_LOG_LINES",
    "CommandError",
    "CommandSink",
    "RemoteCommands",
    "check_params",
    "int_param",
]

DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 1000
MAX_LOG_BYTES = 48 * 1024  # one reply stays well below common broker packet limits
MAX_REASON_CHARS = 200
STATUS_FILE = "status.json"  # written by the agent each tick (agent.STATUS_FILE)
COMMANDS = ("status", "rollback", "calibrate", "logs", "support-bundle")


class CommandError(EdgeAgentError):
    """A remote command's parameters are wrong, or it cannot be done: an error reply."""


class CommandSink(Protocol):
    def register_command(
        self, name: str, handler: CommandHandler, *, slow: bool = False
    ) -> None: ...


def check_params(params: Mapping[str, Any], allowed: Mapping[str, type | tuple[type, ...]]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise CommandError(f"unknown parameter(s) {unknown}; accepted: {sorted(allowed)}")
    for k, typ in allowed.items():
        v = params.get(k)
        if k in params and (not isinstance(v, typ) or (isinstance(v, bool) and typ is int)):
            raise CommandError(f"parameter {k!r}: wrong type {type(v).__name__}")


def int_param(params: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = params.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CommandError(f"parameter {key!r}: expected an integer {lo}..{hi}, got {v!r}")
    return v


class RemoteCommands:
    """Handlers over the state dir, the config and the in-memory log ring."""

    def __init__(
        self,
        config: Any,
        state_dir: Path,
        ring: LogRing,
        *,
        rollback_wait_s: float | None = None,
        clock: Callable[[], float] = time.time,
        calibrate: CommandHandler | None = None,
    ) -> None:
        self._config = config
        self._state_dir = Path(state_dir)
        self._ring = ring
        self._rollback_wait_s = rollback_wait_s
        self._clock = clock
        self._calibrate = calibrate

    def register(self, sink: CommandSink) -> None:
        sink.register_command("status", self.status)
        sink.register_command("logs", self.logs)
        sink.register_command("calibrate", self.calibrate)
        sink.register_command("rollback", self.rollback, slow=True)
        sink.register_command("support-bundle", self.support_bundle, slow=True)

    # -- handlers --------------------------------------------------------------------------

    def _status_doc(self) -> dict[str, Any] | None:
        from edge_agent.fsutil import read_json

        try:
            doc = read_json(self._state_dir / STATUS_FILE)
        except (OSError, ValueError):
            return None  # not written yet: the verdict says so
        return doc if isinstance(doc, dict) else None

    def status(self, params: dict[str, Any]) -> dict[str, Any]:
        """Verdict, reasons, the one-line summary, and per stream its model and alarms."""
        check_params(params, {})
        st = self._status_doc()
        now = self._clock()
        a = assess(Snapshot(str(self._state_dir), st is not None, st, pid_alive=True), now)
        out: dict[str, Any] = {
            "verdict": a.verdict.value,
            "reasons": list(a.reasons),
            "notes": list(a.notes),
        }
        if st is None:
            return out
        ota = st.get("ota")
        ota = ota if isinstance(ota, dict) else {}
        out["summary"] = summary_line(st, now)
        out["agent_version"] = st.get("agent_version")
        out["started_at"] = st.get("started_at")
        out["streams"] = [
            {
                "name": s.get("name"),
                "model": (s.get("model") or {}).get("name"),
                "version": (s.get("model") or {}).get("version"),
                "windows": s.get("windows"),
                "alarms": s.get("alarms"),
                "alarm_open": s.get("alarm_open"),
                "error": s.get("error"),
            }
            for s in st.get("streams") or []
            if isinstance(s, dict)
        ]
        out["ota"] = {k: ota.get(k) for k in ("state", "active_version", "last_result")}
        return out

    def logs(self, params: dict[str, Any]) -> dict[str, Any]:
        """`{"lines": N}` (default 100, at most 1000): the last N lines, bounded in bytes."""
        check_params(params, {"lines": int})
        n = int_param(params, "lines", DEFAULT_LOG_LINES, 1, MAX_LOG_LINES)
        lines, cut = self._ring.last(n, MAX_LOG_BYTES)
        return {"lines": lines, "truncated": cut, "max_bytes": MAX_LOG_BYTES}

    def calibrate(self, params: dict[str, Any]) -> dict[str, Any] | MultiPart:
        """`{"action": "start"|"stop"|"status", "stream": ..., "windows": N}`."""
        if self._calibrate is None:
            raise CommandError("calibrate: this agent runs no stream it could calibrate")
        return self._calibrate(params)

    def rollback(self, params: dict[str, Any]) -> dict[str, Any]:
        """`{"reason": "...", "force": false}`: as `edge-agent rollback` on the device."""
        from edge_agent.updates import manual_rollback as mr

        check_params(params, {"reason": str, "force": bool})
        reason = str(params.get("reason") or "remote rollback by an operator")
        if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
            raise CommandError(f"reason: at most {MAX_REASON_CHARS} printable characters")
        req = mr.submit(self._state_dir, reason, self._clock(), force=params.get("force") is True)
        wait = self._rollback_wait_s or mr.STALE_AFTER_S + 5.0
        answer = mr.wait_result(self._state_dir, req, wait)
        if answer is None:
            (self._state_dir / mr.REQUEST_FILE).unlink(missing_ok=True)
            raise CommandError(f"the agent did not take the request in {wait:.0f} s; nothing done")
        if not answer.get("ok"):
            raise CommandError(f"refused: {answer.get('message', 'no reason given')}")
        return {
            "rolled_back_from": answer.get("rolled_back_from"),
            "message": str(answer.get("message", "")),
        }

    def support_bundle(self, params: dict[str, Any]) -> MultiPart:
        """`{"chunk_bytes": N, "log_lines": M}`: the bundle in chunks (support_bundle.py)."""
        from edge_agent.service import support_bundle as sb

        check_params(params, {"chunk_bytes": int, "log_lines": int})
        size = int_param(params, "chunk_bytes", sb.DEFAULT_CHUNK_BYTES, sb.MIN_CHUNK_BYTES,
                    sb.MAX_CHUNK_BYTES)  # fmt: skip
        n = int_param(params, "log_lines", 500, 0, 1000)
        lines, _ = self._ring.last(n, sb.MAX_BUNDLE_BYTES * 4)
        try:
            data, kept = sb.bundle_bytes(self._config, self._status_doc(), lines, sb.versions())
            return MultiPart(sb.chunks(data, size, kept))
        except EdgeAgentError as e:
            raise CommandError(str(e)) from e
