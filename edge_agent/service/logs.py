"""Logging setup: structured journald records under systemd, readable lines elsewhere.

Modes (`[logging] format`):
- "plain": `2026-11-23 10:00:00 INFO edge_agent.x: msg [stream=demo model_version=3]`
- "journal": native journald records with fields STREAM, MODEL_VERSION, MESSAGE_ID,
  PRIORITY, LOGGER, CODE_* (via systemd-python when installed, else the documented
  native protocol over /run/systemd/journal/socket: no extra needed)
- "auto" (default): "journal" when stderr is connected to the journal
  ($JOURNAL_STREAM names stderr's device:inode), else "plain". If the journal
  socket is missing, lines on stderr carry `<N>` priority prefixes that journald
  understands, without a second timestamp.

Code attaches fields with `log.info("...", extra=fields(stream=name, model_version=v,
message_id=MSG_ANOMALY_START))`.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from edge_agent.config import LoggingConfig
from edge_agent.errors import ConfigError

__all__ = [
    "JOURNAL_SOCKET",
    "LEVELS",
    "MSG_AGENT_READY",
    "MSG_AGENT_STARTED",
    "MSG_AGENT_STOPPING",
    "MSG_ANOMALY_END",
    "MSG_ANOMALY_START",
    "MSG_MODEL_PROMOTED",
    "MSG_MODEL_ROLLED_BACK",
    "MSG_SOURCE_FAILED",
    "MSG_WATCHDOG_STALL",
    "JournalHandler",
    "PlainFormatter",
    "fields",
    "journal_record",
    "setup_logging",
    "under_journal",
]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "edge-agent"
MAX_JOURNAL_MESSAGE = 48 * 1024  # beyond a datagram's size journald needs memfds; we cut

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# MESSAGE_IDs (128-bit, fixed forever) so `journalctl MESSAGE_ID=...` finds an event
# kind across versions. Generated once with uuid4; never reuse one for another meaning.
MSG_AGENT_STARTED = "4eb9bdc7b535445b89fca38ab6b8f3eb"
MSG_AGENT_READY = "df4ea029a9c64cfba3224e4b584a23c9"
MSG_AGENT_STOPPING = "4f59386f29044bc8a0bfb362bffa70bc"
MSG_ANOMALY_START = "afabfe871036437d836089e5856731a1"
MSG_ANOMALY_END = "b6a7ee2394ec4e24965c9c65608ba6a3"
MSG_MODEL_PROMOTED = "74851d4a03ea4c6d860cf39715b46c1f"
MSG_MODEL_ROLLED_BACK = "d8578d8980a14e489e2877607655dead"
MSG_SOURCE_FAILED = "f7180fe72fa8494191fe417858f2b69a"
MSG_WATCHDOG_STALL = "aa65353743ad4d43ab5f71fe42c55565"

# record attribute -> journal field
_FIELD_ATTRS = (
    ("stream", "STREAM"),
    ("model_version", "MODEL_VERSION"),
    ("message_id", "MESSAGE_ID"),
)
_OURS = "_edge_agent_handler"


def fields(
    *, stream: str | None = None, model_version: int | None = None, message_id: str | None = None
) -> dict[str, Any]:
    """The `extra=` mapping for a log call that should carry structured fields."""
    out: dict[str, Any] = {}
    if stream is not None:
        out["stream"] = stream
    if model_version is not None:
        out["model_version"] = model_version
    if message_id is not None:
        out["message_id"] = message_id
    return out


def _suffix(record: logging.LogRecord) -> str:
    kv = [
        f"{attr}={getattr(record, attr)}"
        for attr, _ in _FIELD_ATTRS[:2]
        if getattr(record, attr, None) is not None
    ]
    return f" [{' '.join(kv)}]" if kv else ""


class PlainFormatter(logging.Formatter):
    """`2026-11-23 10:00:00 INFO edge_agent.x: msg [stream=demo]`; with `journal_prefix`
    it writes `<6>edge_agent.x: msg` instead (journald adds time and reads the level)."""

    def __init__(self, *, journal_prefix: bool = False) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.journal_prefix = journal_prefix

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage() + _suffix(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            msg += "\n" + record.exc_text
        if self.journal_prefix:
            pri = _priority(record.levelno)
            return "\n".join(f"<{pri}>{record.name}: {line}" for line in msg.split("\n"))
        return f"{self.formatTime(record, self.datefmt)} {record.levelname} {record.name}: {msg}"


def _priority(levelno: int) -> int:
    """syslog priority: 3 err, 4 warning, 6 info, 7 debug (2 crit for CRITICAL)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


def journal_record(record: logging.LogRecord, message: str) -> dict[str, str]:
    """The journal fields for one record (pure)."""
    if len(message) > MAX_JOURNAL_MESSAGE:
        message = message[:MAX_JOURNAL_MESSAGE] + " [cut]"
    out = {
        "MESSAGE": message,
        "PRIORITY": str(_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "LOGGER": record.name,
        "THREAD_NAME": record.threadName or "",
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
    }
    for attr, key in _FIELD_ATTRS:
        v = getattr(record, attr, None)
        if v is not None:
            out[key] = str(v)
    return out


def _encode(rec: Mapping[str, str]) -> bytes:
    """journald native protocol: `KEY=value\\n`, or `KEY\\n<u64 le length><value>\\n`
    for values containing a newline."""
    parts = []
    for k, v in rec.items():
        b = v.encode("utf-8", "replace")
        if b"\n" in b:
            parts.append(k.encode() + b"\n" + struct.pack("<Q", len(b)) + b + b"\n")
        else:
            parts.append(k.encode() + b"=" + b + b"\n")
    return b"".join(parts)


class JournalHandler(logging.Handler):
    """Sends records to journald with structured fields; falls back to stderr lines."""

    def __init__(
        self, socket_path: str = JOURNAL_SOCKET, *, fallback: TextIO | None = None
    ) -> None:
        super().__init__()
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._lock_send = threading.Lock()
        self._fallback = fallback if fallback is not None else sys.stderr
        self._fallback_fmt = PlainFormatter(journal_prefix=True)
        self._lib_send: Any = None
        if socket_path == JOURNAL_SOCKET:
            try:
                from systemd import journal

                self._lib_send = journal.send
            except ImportError:
                self._lib_send = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            rec = journal_record(record, msg)
            if self._lib_send is not None:
                self._lib_send(rec.pop("MESSAGE"), **rec)
                return
            with self._lock_send:
                self._sock.sendto(_encode(rec), self.socket_path)
        except OSError:
            # journald restarting or gone: the line still reaches stderr (-> journal).
            self._fallback.write(self._fallback_fmt.format(record) + "\n")
            self._fallback.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


def under_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True if `stream` is the journal stream systemd connected ($JOURNAL_STREAM=dev:ino)."""
    js = environ.get("JOURNAL_STREAM", "")
    if not js:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return js == f"{st.st_dev}:{st.st_ino}"


def setup_logging(
    cfg: LoggingConfig,
    override_level: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    journal_socket: str = JOURNAL_SOCKET,
) -> str:
    """Configure the root logger; returns the mode chosen: "plain", "journal" or
    "journal-stderr". `override_level` (from --log-level) wins over the config.
    Calling it again replaces what an earlier call installed."""
    name = (override_level or cfg.level).lower()
    if name not in LEVELS:
        raise ConfigError(f"log level {name!r}: expected one of {', '.join(LEVELS)}")
    env = os.environ if environ is None else environ
    out = stream if stream is not None else sys.stderr
    mode: str = cfg.format
    if mode == "auto":
        mode = "journal" if under_journal(env, out) else "plain"
    handler: logging.Handler
    if mode == "journal" and Path(journal_socket).exists():
        handler = JournalHandler(journal_socket, fallback=out)
    elif mode == "journal":
        mode = "journal-stderr"
        handler = logging.StreamHandler(out)
        handler.setFormatter(PlainFormatter(journal_prefix=True))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(PlainFormatter())
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _OURS, False):
            root.removeHandler(h)
            h.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[name])
    return mode
