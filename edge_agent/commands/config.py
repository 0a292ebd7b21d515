"""`edge-agent config validate FILE`: check a configuration without running anything."""

from __future__ import annotations

import argparse
from typing import Any

from edge_agent.config import load_config

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    v = csub.add_parser("validate", help="check a config file; exit 0 if valid, 2 if not")
    v.add_argument("file")
    v.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)  # ConfigError -> exit 2 with file and key path
    kinds = ", ".join(f"{s.name} ({s.source.kind})" for s in cfg.streams) or "none"
    print(f"{args.file}: OK (device {cfg.device_id}, streams: {kinds})")
    return 0
