"""`edge-agent` command line. Each subcommand lives in `edge_agent/commands/<name>.py`
with `register(subparsers)`; this module only dispatches.

Exit codes (contract): 0 success, 1 failure, 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge_agent import __version__
from edge_agent.errors import ConfigError, EdgeAgentError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Order is the order shown by --help.
_COMMANDS = (
    "run",
    "config",
    "profile",
    "bench",
    "calibrate",
    "selftest",
    "status",
    "models",
    "rollback",
    "model",
    "events",
    "support_bundle",
)

log = logging.getLogger("edge_agent")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only` (a command's name), just that command's: the
    long-running `run` then does not import every other command (their modules and
    what they pull in stay out of the agent's resident memory)."""
    p = argparse.ArgumentParser(
        prog="edge-agent",
        description="Anomaly detection on factory gateways: sensor streams in, alarms out.",
    )
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    p.add_argument("--log-level", default=None, help="debug, info, warning, error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS if only is None else (only,):
        importlib.import_module(f"edge_agent.commands.{name}").register(sub)
    return p


def _command_in(argv: Sequence[str]) -> str | None:
    """The module of the command `argv` names, if it names one (else None: the whole
    parser, for --help, --version and usage errors). Global options before the command:
    only --log-level takes a value."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1
    if i >= len(argv):
        return None
    name = argv[i].replace("-", "_")
    return name if name in _COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except ConfigError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return EXIT_USAGE
    except EdgeAgentError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:
        # `edge-agent status | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return EXIT_OK
    return rc
