"""`edge-agent selftest`: can this device run its configuration? For the technician.

Checks, each with a one-line verdict: the config validates, a device profile applies,
the state dir is writable, every stream's model verifies (sha256), loads on its backend
and reproduces its golden vectors, and the broker answers (reported, never fatal:
the outbox holds data while it is down). Exit 0 if all pass, 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, default_state_dir, demo_stream, load_config
from edge_agent.errors import EdgeAgentError

__all__ = ["register"]

BROKER_TIMEOUT_S = 2.0


def register(sub: Any) -> None:
    p = sub.add_parser("selftest", help="check config, profile, state dir, models and broker")
    p.add_argument("--config", help="agent config (default: the demo stream only)")
    p.add_argument("--state-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)


def _check(
    results: list[dict[str, Any]], name: str, fn: Callable[[], str], fatal: bool = True
) -> None:
    try:
        detail = fn()
        results.append({"check": name, "ok": True, "detail": detail, "fatal": fatal})
    except (EdgeAgentError, OSError) as e:
        results.append({"check": name, "ok": False, "detail": str(e), "fatal": fatal})


def _run(args: argparse.Namespace) -> int:
    from edge_agent.profiles import load_profiles, select
    from edge_agent.runtime.model import load_model, resolve_model_dir

    results: list[dict[str, Any]] = []
    cfg = AgentConfig(state_dir=str(default_state_dir()), streams=(demo_stream(fast=True),))

    def config() -> str:
        nonlocal cfg
        if args.config:
            cfg = load_config(args.config)
        if args.state_dir:
            cfg = replace(cfg, state_dir=args.state_dir)
        return f"{args.config or 'demo defaults'}: {len(cfg.streams)} stream(s)"

    _check(results, "config", config)
    sel = select(cfg.profile, load_profiles())
    results.append(
        {
            "check": "profile",
            "ok": True,
            "fatal": True,
            "detail": f"{sel.profile.name}: {sel.reason}",
        }
    )

    def state_dir() -> str:
        d = Path(cfg.state_dir)
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".selftest"
        probe.write_bytes(b"ok")
        probe.unlink()
        st = os.statvfs(d)
        return f"{d} writable, {st.f_bavail * st.f_frsize / 2**20:.0f} MB free"

    _check(results, "state dir", state_dir)
    models_dir = Path(cfg.models_dir) if cfg.models_dir else None
    for sc in cfg.streams:

        def model(sc: Any = sc) -> str:
            d = resolve_model_dir(
                sc.model, sc.variant, sel.profile, models_dir, Path(cfg.state_dir)
            )
            m = load_model(d, sel.profile)
            ratio = m.check_golden()
            fb = f"; fallback: {m.backend.fallback}" if m.backend.fallback else ""
            return (
                f"{m.description} on {', '.join(m.backend.providers)}: golden vectors "
                f"reproduce ({ratio:.0%} of tolerance){fb}"
            )

        _check(results, f"model [{sc.name}]", model)

    def broker() -> str:
        if not cfg.mqtt.enabled:
            return "MQTT disabled in config"
        with socket.create_connection((cfg.mqtt.host, cfg.mqtt.port), BROKER_TIMEOUT_S):
            return f"{cfg.mqtt.host}:{cfg.mqtt.port} accepts connections"

    _check(results, "broker", broker, fatal=False)
    failed = [r for r in results if not r["ok"] and r["fatal"]]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": results}, indent=2))
    else:
        for r in results:
            mark = "ok  " if r["ok"] else ("FAIL" if r["fatal"] else "warn")
            print(f"[{mark}] {r['check']:<16} {r['detail']}")
        print("selftest: " + ("PASS" if not failed else f"FAIL ({len(failed)} check(s))"))
    return 1 if failed else 0
