"""`edge-agent profile`: which device profile applies here, and why."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from edge_agent.config import load_config
from edge_agent.profiles import load_profiles, read_facts, select

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("profile", help="show the device profile in use and the reason")
    p.add_argument("--config", help="agent config (its `profile` setting is honoured)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    name = load_config(args.config).profile if args.config else "auto"
    facts = read_facts()
    sel = select(name, load_profiles(), facts)
    if args.json:
        print(
            json.dumps(
                {
                    "profile": dataclasses.asdict(sel.profile),
                    "reason": sel.reason,
                    "facts": dataclasses.asdict(facts),
                },
                indent=2,
            )
        )
        return 0
    p = sel.profile
    print(f"profile:   {p.name} ({p.description})")
    print(f"reason:    {sel.reason}")
    print(f"backends:  {', '.join(p.backends)}   precision: {', '.join(p.precision)}")
    print(f"providers: {', '.join(p.onnx_providers)}   threads: {p.threads}")
    print(f"budgets:   {p.model_memory_mb} MB models, {p.window_latency_ms} ms per window")
    return 0
