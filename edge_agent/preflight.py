"""Can this configuration run? The checks beyond the schema, without running anything.

`config validate` and `selftest` call `check_runnable`: every stream's model resolves
(and its card and file verify), its source gives the channels, frame size and window
the model takes, and every file the config names (replay recording, CSV columns,
TLS certificates and key, MQTT password, OTA root) exists and can be read. Each
finding names its key path, e.g. `streams[0].window: 32 samples, but model ... takes
windows of exactly 64 samples`.

What cannot be checked here is a warning, not an error: a serial port that is not
plugged in yet (the agent waits for it), a systemd credential outside systemd.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, StreamConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.profiles import Profile

__all__ = ["NO_STREAMS", "Finding", "check_runnable"]

NO_STREAMS = (
    "no streams configured: add a [[streams]] table (name, model, source) to this file "
    "and restart the agent; until then it runs idle and says so in `edge-agent status` "
    "(docs/configuration.md#streams)"
)


@dataclass(frozen=True)
class Finding:
    """One problem: `key` is the key path in the config file; `fatal`: the agent cannot
    run the config as written (else a warning)."""

    key: str
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _readable(path: str) -> str | None:
    """Why `path` cannot be read as a file, or None."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        return f"{path}: no such file"
    except IsADirectoryError:
        return f"{path}: is a directory, expected a file"
    except PermissionError:
        return f"{path}: not readable by this user (uid {os.getuid()})"
    except OSError as e:
        return f"{path}: cannot read: {e.strerror or e}"
    return None


def check_runnable(cfg: AgentConfig, profile: Profile) -> list[Finding]:
    """Every problem found, in file order; empty when the config can run."""
    out = _mqtt_files(cfg) + _ota_files(cfg)
    if cfg.models_dir and not Path(cfg.models_dir).is_dir():
        out.append(Finding("models_dir", f"{cfg.models_dir}: no such directory"))
    if not cfg.streams:
        out.append(Finding("streams", NO_STREAMS, fatal=False))
    for i, sc in enumerate(cfg.streams):
        out += _stream(f"streams[{i}]", sc, cfg, profile)
    return out


def _mqtt_files(cfg: AgentConfig) -> list[Finding]:
    m = cfg.mqtt
    out: list[Finding] = []
    if not m.enabled:
        return out
    if m.password_file and (why := _readable(m.password_file)):
        out.append(Finding("mqtt.password_file", why))
    if m.password_credential:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir:
            why = _readable(str(Path(cred_dir) / m.password_credential))
            if why:
                out.append(Finding("mqtt.password_credential", why))
        else:
            out.append(
                Finding(
                    "mqtt.password_credential",
                    "not checked: $CREDENTIALS_DIRECTORY is set only inside the systemd "
                    "service (LoadCredential=); `edge-agent selftest` there logs in with it",
                    fatal=False,
                )
            )
    tls = m.tls
    if not tls.enabled:
        return out
    missing = []
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path and (why := _readable(path)):
            out.append(Finding(f"mqtt.tls.{key}", why))
            missing.append(key)
    if bool(tls.cert_file) != bool(tls.key_file):
        out.append(Finding("mqtt.tls", "cert_file and key_file go together (mutual TLS)"))
    elif not missing:
        out += _tls_loads(tls.ca_file, tls.cert_file, tls.key_file)
    return out


def _tls_loads(ca: str, cert: str, key: str) -> list[Finding]:
    """The certificates parse, and the key belongs to the certificate."""
    try:
        ctx = ssl.create_default_context(cafile=ca or None)
    except (ssl.SSLError, ValueError) as e:
        return [Finding("mqtt.tls.ca_file", f"{ca}: not a PEM CA certificate: {e}")]
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as e:
            return [
                Finding(
                    "mqtt.tls.cert_file",
                    f"{cert} with key {key}: cannot be loaded ({e}); a PEM certificate and "
                    "its own unencrypted private key are needed",
                )
            ]
    return []


def _ota_files(cfg: AgentConfig) -> list[Finding]:
    o = cfg.ota
    if not (o.enabled and o.root_file):
        return []
    why = _readable(o.root_file)
    if why:
        return [Finding("ota.root_file", why + " (updates would be refused: no trusted root)")]
    try:
        json.loads(Path(o.root_file).read_bytes())
    except (ValueError, OSError) as e:
        return [Finding("ota.root_file", f"{o.root_file}: not a JSON root document: {e}")]
    return []


def _stream(where: str, sc: StreamConfig, cfg: AgentConfig, profile: Profile) -> list[Finding]:
    from edge_agent.runtime.card import load_card
    from edge_agent.runtime.model import resolve_model_dir

    models_dir = Path(cfg.models_dir) if cfg.models_dir else None
    out = _source_files(where, sc)
    try:
        d = resolve_model_dir(sc.model, sc.variant, profile, models_dir, Path(cfg.state_dir))
        card = load_card(d)  # verifies the model file's sha256
    except EdgeAgentError as e:
        return [*out, Finding(f"{where}.model", str(e))]
    if out:  # the source cannot even be read: its shape cannot be checked
        return out
    pre = card.preprocessing
    shape = card.input.shape
    fixed = shape[1] if len(shape) >= 2 else None
    if sc.window and fixed is not None and sc.window != fixed:
        out.append(
            Finding(
                f"{where}.window",
                f"{sc.window} samples, but model {card.name} takes windows of exactly "
                f"{fixed} samples (its input shape); remove `window` or set {fixed}",
            )
        )
    if sc.hop and sc.hop > (sc.window or pre.window):
        out.append(
            Finding(
                f"{where}.hop",
                f"{sc.hop} is longer than the window ({sc.window or pre.window}): "
                "samples between windows would never be scored",
                fatal=False,
            )
        )
    return out + _source_fits(where, sc, card.name, pre)


def _source_files(where: str, sc: StreamConfig) -> list[Finding]:
    o: Any = sc.source.options
    out: list[Finding] = []
    # replay files, login passwords, OPC UA certificates and keys
    for key in ("path", "password_file", "certificate", "private_key", "server_certificate"):
        path = getattr(o, key, "")
        if isinstance(path, str) and path and (why := _readable(path)):
            out.append(Finding(f"{where}.source.{key}", why))
    url = getattr(o, "url", "")
    if isinstance(url, str) and url and "://" not in url and (why := _readable(url)):
        out.append(Finding(f"{where}.source.url", why))  # a video file, not a stream URL
    port = getattr(o, "port", None)
    if sc.source.kind == "serial" and isinstance(port, str) and not Path(port).exists():
        out.append(
            Finding(
                f"{where}.source.port",
                f"{port}: not present now (the agent waits for it and reconnects; "
                "check the name under /dev/serial/by-id/)",
                fatal=False,
            )
        )
    return out


def _source_fits(where: str, sc: StreamConfig, model: str, pre: Any) -> list[Finding]:
    from edge_agent.sources.registry import create_source

    spec = sc.source.with_default_channels(tuple(pre.channels))
    o: Any = spec.options
    try:
        # Building a source does no I/O except a replay reading its file's header and rows.
        source = create_source(spec.kind, sc.name, o)
        channels, columns = tuple(source.channels), int(source.columns)
    except (EdgeAgentError, OSError, ValueError) as e:
        key = "columns" if getattr(o, "columns", ()) else "path" if hasattr(o, "path") else ""
        return [Finding(f"{where}.source" + (f".{key}" if key else ""), str(e))]
    if len(channels) == len(pre.channels) and columns == pre.columns:
        return _recording_fits(where, sc, source, pre)
    if pre.frame is not None:
        h, w = pre.frame
        return [
            Finding(
                f"{where}.source",
                f"gives {columns} values per frame, model {model} takes a {h}x{w} grayscale "
                f"frame: set height = {h}, width = {w}",
            )
        ]
    key = next((k for k in ("columns", "channels") if getattr(o, k, ())), "")
    return [
        Finding(
            f"{where}.source" + (f".{key}" if key else ""),
            f"gives {len(channels)} channels {list(channels)}, model {model} expects "
            f"{len(pre.channels)} {list(pre.channels)}",
        )
    ]


def _recording_fits(where: str, sc: StreamConfig, source: Any, pre: Any) -> list[Finding]:
    """A replayed file must hold one whole window somewhere between its holes, or the
    agent runs and never scores anything (a loop too: each pass starts after a hole)."""
    from edge_agent.sources.replay import ReplaySource

    if not isinstance(source, ReplaySource):
        return []
    window = sc.window or pre.window
    try:
        run, rows = source.longest_run, source.rows
    except EdgeAgentError as e:
        return [Finding(f"{where}.source.path", str(e))]
    if run >= window:
        return []
    o: Any = sc.source.options
    what = (
        f"holds {run} rows"
        if run == rows
        else f"has holes (skipped rows, time jumps): its longest stretch without a hole is "
        f"{run} rows"
    )
    return [
        Finding(
            f"{where}.source.path",
            f"{o.path} {what}, fewer than the model's window of {window} samples: no "
            "window would ever be scored; record more data",
        )
    ]
