"""`edge-agent run`: run all configured streams until stopped (SIGTERM/SIGINT)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from typing import Any

from edge_agent.agent import Agent, RunLimits
from edge_agent.config import AgentConfig, default_state_dir, demo_stream, load_config
from edge_agent.errors import ConfigError

__all__ = ["build_config", "register"]

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the agent (all configured streams) until stopped")
    p.add_argument("--config", help="agent config file (TOML)")
    p.add_argument(
        "--demo", action="store_true", help="add the demo stream (synthetic source + bundled model)"
    )
    p.add_argument("--state-dir", help="override the config's state_dir")
    p.add_argument("--max-windows", type=int, help="stop after scoring N windows")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.set_defaults(func=_run)


def build_config(args: argparse.Namespace) -> AgentConfig:
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = AgentConfig(state_dir=str(default_state_dir()), source_file="(defaults)")
    if args.demo:
        bounded = args.max_windows is not None or args.duration is not None
        cfg = replace(cfg, streams=(*cfg.streams, demo_stream(bounded=bounded)))
    if args.state_dir:
        cfg = replace(cfg, state_dir=args.state_dir)
    if not cfg.streams:
        raise ConfigError(f"{cfg.source_file}: no [[streams]] configured (or use --demo)")
    if args.max_windows is not None and args.max_windows <= 0:
        raise ConfigError("--max-windows: expected a positive number")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration: expected a positive number")
    return cfg


def _run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    cfg = build_config(args)
    agent = Agent(cfg, limits=RunLimits(args.max_windows, args.duration))
    agent.prepare()
    agent.install_signal_handlers()
    agent.run()
    _summary(agent)
    return 1 if any(s.error for s in agent.streams) else 0


def _summary(agent: Agent) -> None:
    snap = agent.snapshot(running=False)
    out = sys.stdout
    print(f"edge-agent stopped: {agent.stop_reason or 'stopped'}", file=out)
    for s in snap["streams"]:
        m = s["model"]
        print(
            f"  {s['name']}: {s['windows']} windows, {s['alarms']} alarms, {s['events']} events, "
            f"model {m['name']} v{m['version']} on {m['backend']}"
            + (f", error: {s['error']}" if s["error"] else ""),
            file=out,
        )
    print(f"  state: {agent.state_dir}", file=out)
