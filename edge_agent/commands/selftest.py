"""`edge-agent selftest`: can this device run its configuration? For the technician.

Checks, each with a one-line verdict: the config validates and can run (what `config
validate` checks: models fit their sources, named files and credentials are readable), a
device profile applies, the state dir is writable, every stream's model verifies
(sha256), loads on its backend and reproduces its golden vectors, and the broker
accepts a real login with the configured credentials and TLS (a refused login or a
failed TLS handshake fails; a broker that cannot be reached now is a warning: the
outbox holds data while it is down). Exit 0 if all pass, 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, default_state_dir, demo_stream, load_config
from edge_agent.errors import BrokerUnreachableError, EdgeAgentError

__all__ = ["register"]

BROKER_TIMEOUT_S = 5.0


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
    except BrokerUnreachableError as e:  # not now; the outbox waits for it
        results.append({"check": name, "ok": False, "detail": str(e), "fatal": False})
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
    if results[-1]["ok"]:
        _check(results, "config runs", lambda: _runnable(cfg, sel.profile))
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
        from edge_agent.reporting.login import broker_login

        if not cfg.mqtt.enabled:
            return "MQTT disabled in config"
        client_id = cfg.mqtt.client_id or f"edge-agent-{cfg.device_id}"
        return broker_login(cfg.mqtt, client_id, BROKER_TIMEOUT_S)

    _check(results, "broker", broker)
    failed = [r for r in results if not r["ok"] and r["fatal"]]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": results}, indent=2))
    else:
        for r in results:
            mark = "ok  " if r["ok"] else ("FAIL" if r["fatal"] else "warn")
            print(f"[{mark}] {r['check']:<16} {r['detail']}")
        print("selftest: " + ("PASS" if not failed else f"FAIL ({len(failed)} check(s))"))
    return 1 if failed else 0


def _runnable(cfg: AgentConfig, profile: Any) -> str:
    """What `config validate` checks beyond the schema; EdgeAgentError listing the errors."""
    from edge_agent.errors import ConfigError
    from edge_agent.preflight import check_runnable

    findings = check_runnable(cfg, profile)
    errors = [str(f) for f in findings if f.fatal]
    if errors:
        raise ConfigError("; ".join(errors))
    warnings = [str(f) for f in findings if not f.fatal]
    return "models fit their sources; named files are readable" + (
        "; warning: " + "; ".join(warnings) if warnings else ""
    )
