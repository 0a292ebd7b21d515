"""`edge-agent config validate FILE`: can the agent run this configuration?

First the schema (TOML, known keys, types, limits), then what can be checked without
running (`edge_agent.preflight`): models resolve and fit their sources, the files and
credentials the config names exist and are readable; with `[serving]` on, the checks
the endpoint makes when it starts (token file, socket directory). Every error is printed with its
key path; exit 2 if there is one, else 0 (warnings do not fail).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edge_agent.config import load_config

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    v = csub.add_parser(
        "validate",
        help="check a config file: schema, models, sources, files; exit 0 if it can run, 2 if not",
    )
    v.add_argument("file")
    v.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    from edge_agent.preflight import check_runnable
    from edge_agent.profiles import Profile, load_profiles, select

    cfg = load_config(args.file)  # ConfigError -> exit 2 with file and key path
    # The device profile picks model variants: only streams need it (a config without
    # streams validates where no device_profiles are installed, e.g. a build host).
    profile = select(cfg.profile, load_profiles()).profile if cfg.streams else Profile("none")
    findings = check_runnable(cfg, profile)
    if cfg.serving.enabled:  # the very checks the endpoint makes at start (serving/checks.py)
        from edge_agent.preflight import Finding
        from edge_agent.serving.checks import check_serving

        findings += [Finding(k, m, fatal=f) for k, m, f in check_serving(cfg.serving)]
    errors = [f for f in findings if f.fatal]
    for f in findings:
        kind = "error" if f.fatal else "warning"
        print(f"edge-agent: {args.file}: {kind}: {f}", file=sys.stderr)
    if errors:
        print(
            f"{args.file}: {len(errors)} error(s): the agent cannot run this configuration",
            file=sys.stderr,
        )
        return 2
    kinds = ", ".join(f"{s.name} ({s.source.kind})" for s in cfg.streams) or "none"
    print(f"{args.file}: OK (device {cfg.device_id}, streams: {kinds})")
    return 0
