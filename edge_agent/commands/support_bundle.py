"""`edge-agent support-bundle`: one .tar.gz a technician sends to whoever supports the device.

    edge-agent support-bundle [--config FILE] [--state-dir DIR] [--out FILE]
                              [--journal-lines N]

What goes in (MANIFEST.json lists every member, what was cut and what was skipped, why):
- `config.json`: the config file parsed, every secret replaced by "<redacted>" (the same
  redaction as the remote `support-bundle` command: service/support_bundle.py). Files
  the config names (password files, TLS keys, credentials) are never read. A config that
  does not validate is still included (as parsed TOML, redacted) with the error.
- `status.json` and `status.txt`: `edge-agent status --json` and its text.
- `models.json`: `edge-agent models --json` (slots, versions, commit state).
- `versions.json`: agent, Python, platform, package versions.
- `events.jsonl`: the newest part of the local event history (`edge-agent events`),
  the anomaly and sensor events the agent raised.
- `journal.txt`: the last N lines of `journalctl -u edge-agent` where journalctl works;
  otherwise skipped with the reason in the manifest.

Bounded: each member at most MAX_MEMBER_BYTES (the oldest journal lines go first), so
the archive stays small enough to mail. Works while the agent is stopped (reads files
only). Exit 0 with the archive's path; 2 for bad usage; 1 when it cannot be written.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.commands.status import DEFAULT_CONFIG, read_snapshot, resolve_state_dir
from edge_agent.errors import ConfigError, EdgeAgentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

__all__ = ["MAX_JOURNAL_LINES", "MAX_MEMBER_BYTES", "collect", "register", "write_archive"]

MAX_MEMBER_BYTES = 1024 * 1024
MAX_JOURNAL_LINES = 5000
DEFAULT_JOURNAL_LINES = 1000
JOURNAL_TIMEOUT_S = 20.0
UNIT = "edge-agent"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "support-bundle",
        help="write one .tar.gz with config (secrets redacted), status, models, versions, logs",
        description="Collect what support needs into one archive (docs/install.md#support-bundle).",
    )
    p.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--state-dir", help="state directory (default: from the config)")
    p.add_argument(
        "--out", help="archive to write (default: ./edge-agent-support-<device>-<time>.tar.gz)"
    )
    p.add_argument(
        "--journal-lines",
        type=int,
        default=DEFAULT_JOURNAL_LINES,
        help=f"last journal lines of the service (0..{MAX_JOURNAL_LINES}, "
        f"default {DEFAULT_JOURNAL_LINES})",
    )
    p.set_defaults(func=_support_bundle)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _config_member(path: Path | None) -> tuple[dict[str, Any], str]:
    """The redacted config (validated if possible) and the device id it names."""
    from edge_agent.config import load_config
    from edge_agent.service.support_bundle import redact

    if path is None:
        return {"file": None, "note": f"no config file ({DEFAULT_CONFIG} absent)"}, ""
    doc: dict[str, Any] = {"file": str(path)}
    try:
        cfg = load_config(path)
    except ConfigError as e:
        doc["error"] = str(e)
        try:  # still show what was written, redacted, so the mistake can be found
            raw = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e2:
            doc["note"] = f"not readable as TOML: {e2}"
            return doc, ""
        doc["parsed"] = redact(raw)
        device = raw.get("device_id")
        return doc, device if isinstance(device, str) else ""
    doc["config"] = redact(cfg)
    return doc, cfg.device_id


def _status_members(state_dir: Path) -> dict[str, bytes]:
    from edge_agent.service.status import assess
    from edge_agent.service.status_render import render_text

    snap = read_snapshot(state_dir)
    now = time.time()
    a = assess(snap, now)
    doc = {
        "verdict": a.verdict.value,
        "reasons": list(a.reasons),
        "notes": list(a.notes),
        "stale": a.stale,
        "age_s": a.age_s,
        "state_dir": str(state_dir),
        "error": snap.error,
        "state": snap.state,
    }
    return {"status.json": _json(doc), "status.txt": render_text(snap, a, now).encode()}


def _models_member(state_dir: Path) -> dict[str, Any]:
    from edge_agent.commands.models import slots_report

    try:
        return slots_report(state_dir)
    except (EdgeAgentError, OSError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def journal_lines(n: int, run: Callable[..., Any] = subprocess.run) -> tuple[bytes | None, str]:
    """The service's last `n` journal lines, or None and why they are not there."""
    if n == 0:
        return None, "--journal-lines 0"
    exe = shutil.which("journalctl")
    if exe is None:
        return None, "journalctl not found (no systemd journal on this machine)"
    try:
        r = run(
            [exe, "-u", UNIT, "-n", str(n), "--no-pager", "-o", "short-iso", "-q"],
            capture_output=True,
            timeout=JOURNAL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"journalctl failed: {e}"
    out = bytes(r.stdout)
    if r.returncode != 0:
        err = bytes(r.stderr).decode(errors="replace").strip()[:300]
        return None, f"journalctl exit {r.returncode}: {err or 'no message'}"
    if not out.strip():
        return None, f"no journal lines for {UNIT}.service (not run as a service here?)"
    return out, ""


def _tail_file(path: Path, limit: int) -> tuple[bytes | None, str]:
    """The last `limit` bytes of a file (whole lines), or None and why not."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit - 1))
            data = f.read()
    except FileNotFoundError:
        return None, f"{path} does not exist (no event raised here yet)"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    return (_cut_oldest(data, limit)[0] if size > limit else data), ""


def _cut_oldest(data: bytes, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes, dropping whole lines from the start."""
    if len(data) <= limit:
        return data, False
    tail = data[-limit:]
    nl = tail.find(b"\n")
    return (tail[nl + 1 :] if nl >= 0 else tail), True


def collect(
    config: Path | None, state_dir: Path, journal: int
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every member's bytes (bounded) and the manifest describing them."""
    from edge_agent.reporting.history import HISTORY_FILE
    from edge_agent.service.support_bundle import versions

    cfg_doc, device = _config_member(config)
    members: dict[str, bytes] = {"config.json": _json(cfg_doc)}
    members.update(_status_members(state_dir))
    members["models.json"] = _json(_models_member(state_dir))
    members["versions.json"] = _json(versions())
    skipped: dict[str, str] = {}
    events, why = _tail_file(state_dir / HISTORY_FILE, MAX_MEMBER_BYTES)
    if events is None:
        skipped["events.jsonl"] = why
    else:
        members["events.jsonl"] = events
    log, why = journal_lines(journal)
    if log is None:
        skipped["journal.txt"] = why
    else:
        members["journal.txt"] = log
    cut = []
    for name, data in members.items():
        members[name], was_cut = _cut_oldest(data, MAX_MEMBER_BYTES)
        if was_cut:
            cut.append(name)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device_id": device,
        "state_dir": str(state_dir),
        "config_file": str(config) if config else None,
        "members": {n: len(d) for n, d in members.items()},
        "cut_to_limit": cut,
        "member_limit_bytes": MAX_MEMBER_BYTES,
        "skipped": skipped,
        "redaction": "config values under keys naming a password, secret, token, credential, "
        "passphrase or private key are replaced by <redacted>; files the config names "
        "are not read",
    }
    return members, manifest


def write_archive(out: Path, members: Mapping[str, bytes], manifest: Mapping[str, Any]) -> None:
    """Write the .tar.gz (a temp name first, then renamed: never a half archive)."""
    top = out.name.removesuffix(".tar.gz").removesuffix(".tgz") or "support"
    tmp = out.with_name(out.name + ".part")
    now = time.time()
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in {"MANIFEST.json": _json(manifest), **members}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(now), 0o600
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)


def _support_bundle(args: argparse.Namespace) -> int:
    if not 0 <= args.journal_lines <= MAX_JOURNAL_LINES:
        raise ConfigError(f"--journal-lines: expected 0..{MAX_JOURNAL_LINES}")
    config = Path(args.config) if args.config else None
    if config is None and Path(DEFAULT_CONFIG).is_file():
        config = Path(DEFAULT_CONFIG)
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {config}: no such file")
    state_dir = resolve_state_dir(args.state_dir, str(config) if config else None)
    members, manifest = collect(config, state_dir, args.journal_lines)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    device = str(manifest["device_id"] or "device").replace("/", "_")
    out = Path(args.out or f"edge-agent-support-{device}-{stamp}.tar.gz")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a directory; give a file name")
    try:
        write_archive(out, members, manifest)
    except OSError as e:
        print(f"edge-agent: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    size = out.stat().st_size
    print(f"{out} ({size} bytes: {', '.join(sorted(members))})")
    for name, why in manifest["skipped"].items():
        print(f"  {name} skipped: {why}")
    return 0
