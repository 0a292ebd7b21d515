"""What the endpoint needs before it can start, checked the same way by `edge-agent run`
(Endpoint) and `edge-agent config validate`: the token file, and the unix socket's
directory. Light on purpose: validate imports it without the server."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edge_agent.config import ServingConfig
from edge_agent.errors import ServingError

__all__ = ["MIN_TOKEN", "check_serving", "read_token", "socket_dir_problem", "token_warning"]

MIN_TOKEN = 16  # characters; 24 random bytes in base64 (docs/serving.md) give 32


def read_token(path: str) -> str | None:
    """The bearer token from `path` (first line, stripped); None when `path` is empty.
    Raises ServingError (unreadable, shorter than MIN_TOKEN, or not printable ASCII)."""
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ServingError(f"[serving] token_file {path}: {why}") from e
    if not token or len(token[0].strip()) < MIN_TOKEN:
        raise ServingError(
            f"[serving] token_file {path}: needs a token of at least {MIN_TOKEN} characters"
        )
    got = token[0].strip()
    if not all("!" <= c <= "~" for c in got):
        # HTTP carries header values as bytes a client encodes as it likes: a non-ASCII
        # token sent by curl (UTF-8) would never match what the server reads
        raise ServingError(
            f"[serving] token_file {path}: the token must be printable ASCII without spaces "
            "(e.g. `openssl rand -base64 24`)"
        )
    return got


def token_warning(path: str) -> str | None:
    """Why the token file at `path` is too open (readable by every user), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # read_token says why
    if mode & stat.S_IROTH:
        return (
            f"[serving] token_file {path}: readable by every user (mode {stat.S_IMODE(mode):04o}): "
            "any local user can send requests with it; chmod o-r it (docs/serving.md)"
        )
    return None


def socket_dir_problem(path: str) -> str | None:
    """Why the unix socket `path` cannot be created in its directory, or None. The
    agent does not create the directory: under the shipped unit /run is read-only
    (ProtectSystem=strict) and RuntimeDirectory=edge-agent makes /run/edge-agent; a
    missing one elsewhere is more likely a typo than a wish."""
    parent = Path(path).parent
    if not parent.is_dir():
        return (
            f"[serving] socket {path}: directory {parent} does not exist (the agent does not "
            "create it; the shipped service has /run/edge-agent, its RuntimeDirectory)"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"[serving] socket {path}: directory {parent} is not writable by this user"
    return None


def check_serving(cfg: ServingConfig) -> list[tuple[str, str, bool]]:
    """(key, message, fatal) for each problem `edge-agent run` would meet (fatal) or
    warn about; empty when the endpoint is off or can start."""
    if not cfg.enabled:
        return []
    out: list[tuple[str, str, bool]] = []
    if cfg.token_file:
        try:
            read_token(cfg.token_file)
        except ServingError as e:
            out.append(("serving.token_file", _bare(str(e)), True))
        else:
            if warn := token_warning(cfg.token_file):
                out.append(("serving.token_file", _bare(warn), False))
    if cfg.socket and (why := socket_dir_problem(cfg.socket)):
        out.append(("serving.socket", _bare(why), True))
    return out


def _bare(message: str) -> str:
    """`message` without its "[serving] " prefix (the key path says it already)."""
    return message.removeprefix("[serving] ")
