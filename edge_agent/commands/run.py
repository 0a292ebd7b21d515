"""`edge-agent run`: run all configured streams until stopped (SIGTERM/SIGINT)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edge_agent.config import AgentConfig, default_state_dir, demo_stream, load_config
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from edge_agent.agent import Agent

__all__ = ["build_config", "exit_code", "register"]

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
        fast = args.max_windows is not None
        cfg = replace(cfg, streams=(*cfg.streams, demo_stream(fast=fast)))
    if args.state_dir:
        cfg = replace(cfg, state_dir=args.state_dir)
    if not cfg.streams and not args.config:
        raise ConfigError("no streams to run: give --config FILE with [[streams]], or --demo")
    if args.max_windows is not None and args.max_windows <= 0:
        raise ConfigError("--max-windows: expected a positive number")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration: expected a positive number")
    return cfg


def _run(args: argparse.Namespace) -> int:
    # Heavy imports (numpy, runtimes, paho) only for `run`, so `status` stays instant.
    from pathlib import Path

    from edge_agent.agent import Agent, RunLimits
    from edge_agent.reporting.reporter import Reporter
    from edge_agent.service.logs import setup_logging

    cfg = build_config(args)
    setup_logging(cfg.logging, args.log_level)
    if not cfg.streams:
        # The shipped config has none: idle and say so (status DEGRADED), instead of an
        # exit that systemd would turn into a restart loop.
        from edge_agent.preflight import NO_STREAMS

        log.warning("%s: %s", args.config, NO_STREAMS)
    agent = Agent(cfg, limits=RunLimits(args.max_windows, args.duration))
    # Before loading models: a SIGTERM during a slow load still ends in a clean stop.
    agent.install_signal_handlers()
    agent.prepare()
    reporter = Reporter(cfg, Path(cfg.state_dir), agent.birth)
    agent.attach_reporter(reporter)
    if cfg.homeassistant.enabled:
        _attach_homeassistant(agent)
    if cfg.mqtt.enabled:
        _attach_fleet(agent, reporter)
    server = None
    if cfg.metrics.enabled:  # the metrics code stays out of an agent that serves none
        from edge_agent.service.metrics import Metrics, start_metrics_server, update_from_status

        metrics = Metrics()
        server = start_metrics_server(cfg.metrics, metrics)
    if server is not None:
        agent.on_status = lambda snap: update_from_status(metrics, snap)
        agent.supervise_thread("metrics", lambda: server.alive, server.restart)
    try:
        agent.run()
    finally:
        if server is not None:
            server.stop(timeout=2.0)
    _summary(agent)
    return exit_code(agent.stop_reason, failed=any(s.error for s in agent.streams))


# The stop reasons a SIGTERM/SIGINT gives (Agent.install_signal_handlers).
_SIGNAL_STOPS = frozenset({"SIGTERM", "SIGINT"})


def exit_code(stop_reason: str, *, failed: bool) -> int:
    """0, or 1 when a stream gave up for good and the run ended on its own (a limit, the end
    of the data): it did not do all it was asked. A stop that was asked for (`systemctl
    stop`, Ctrl-C) exits 0 whatever failed before, so the unit ends `inactive`, not
    `failed`; the failure stays in status.json."""
    return 1 if failed and stop_reason not in _SIGNAL_STOPS else 0


def _attach_fleet(agent: Agent, reporter: Any) -> None:
    """Retained device state and the remote commands (docs/fleet.md)."""
    from pathlib import Path

    from edge_agent.service import log_ring
    from edge_agent.service.fleet_state import DeviceStatePublisher
    from edge_agent.service.remote_calibration import CalibrationControl
    from edge_agent.service.remote_commands import RemoteCommands

    cfg = agent.cfg
    agent.device_state = DeviceStatePublisher(reporter, cfg.ota.group, agent.families)
    calib = CalibrationControl.for_agent(agent.streams, Path(cfg.state_dir), agent.ota)
    # without an updater, a fitted calibration is applied on the tick (where a manual
    # rollback swaps models too), never beside a swap on another thread
    agent.status_listeners.append(calib.tick)
    RemoteCommands(cfg, Path(cfg.state_dir), log_ring.install(), calibrate=calib.handle).register(
        reporter
    )


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
    ob = snap.get("outbox") or {}
    mq = snap.get("mqtt") or {}
    if ob:
        if mq.get("enabled") is False:  # no broker to name: the records stay local
            link = "MQTT disabled"
        else:
            state = "connected" if mq.get("connected") else "not connected"
            link = f"broker {mq.get('broker') or '?'} {state}"
        print(f"  outbox: {ob.get('depth', 0)} records waiting ({link})", file=out)
    print(f"  state: {agent.state_dir}", file=out)


def _attach_homeassistant(agent: Agent) -> None:
    """Home Assistant discovery and per-stream state (docs/homeassistant.md)."""
    from edge_agent import __version__
    from edge_agent.reporting.ha_publisher import HomeAssistantPublisher
    from edge_agent.reporting.reporter import Reporter

    cfg = agent.cfg
    if not cfg.mqtt.enabled or not isinstance(agent.reporter, Reporter):
        log.warning("[homeassistant] enabled but MQTT is disabled: no discovery is published")
        return
    ha = HomeAssistantPublisher(
        agent.reporter,
        discovery_prefix=cfg.homeassistant.discovery_prefix,
        base=agent.reporter.topics.base.value,
        device=cfg.device_id,
        streams=[s.name for s in agent.streams],
        version=__version__,
        state_interval_s=cfg.homeassistant.state_interval_s,
    )
    ha.attach()
    agent.status_listeners.append(ha.on_status)
