"""The pure verification core: manifest bytes + signatures + trusted root + device facts in,
a VerifiedManifest or one specific OtaError out. No I/O, no clock: `now` is passed in.

Order (cheapest trust first, as in TUF): root not expired -> signature threshold over the
exact bytes -> parse -> manifest expiry (freeze) -> target profile (mix-and-match) ->
agent version -> version above the installed one (rollback). Payload hashes and sizes are
checked while unpacking (ota.unpack), against this verified manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ota.canonical import format_time
from ota.errors import AgentVersionError, ExpiredError, ProfileMismatchError, RollbackError
from ota.manifest import Manifest, parse_agent_version
from ota.root import Root
from ota.signing import Signature, check_threshold

__all__ = ["NO_INSTALLED_VERSION", "VerifiedManifest", "verify"]

NO_INSTALLED_VERSION = -1  # a fresh device: any version >= 0 is an upgrade


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest that passed every check. Only this type is accepted by unpack."""

    manifest: Manifest
    manifest_bytes: bytes
    signer_keyids: tuple[str, ...]
    root_version: int


def verify(  # noqa: PLR0917 - the documented positional contract of the core
    manifest_bytes: bytes,
    signatures: Sequence[Signature],
    trusted_root: Root,
    installed_version: int,
    profile: str | None,
    now: datetime,
    *,
    agent_version: str | None = None,
) -> VerifiedManifest:
    """Check a bundle's manifest; raise the specific OtaError for the first failed check.

    `profile=None` skips the target-profile check (operator-side verification only; a
    device always passes its profile). `agent_version=None` skips the agent-version check.
    """
    if trusted_root.is_expired(now):
        raise ExpiredError(
            f"trusted root v{trusted_root.version} expired at "
            f"{format_time(trusted_root.expires)}; install a rotated root"
        )
    signers = check_threshold(
        manifest_bytes, signatures, trusted_root.keys, trusted_root.threshold, "bundle manifest"
    )
    m = Manifest.from_bytes(manifest_bytes)
    if now >= m.expires:
        raise ExpiredError(
            f"bundle {m.name} v{m.version} expired at {format_time(m.expires)}; "
            "rebuild and re-sign it with a later --expires"
        )
    if profile is not None and profile not in m.profiles:
        raise ProfileMismatchError(
            f"bundle {m.name} v{m.version} targets {', '.join(m.profiles)}, "
            f"not this device's profile {profile!r}"
        )
    if agent_version is not None and parse_agent_version(agent_version) < parse_agent_version(
        m.min_agent_version
    ):
        raise AgentVersionError(
            f"bundle {m.name} v{m.version} needs agent >= {m.min_agent_version}, "
            f"this agent is {agent_version}"
        )
    # No downgrade override: the `allow_downgrade` field of older signed manifests is
    # ignored (a signed override could be replayed anywhere until it expired). An
    # emergency return to an old model is a new, higher version carrying the old weights.
    if m.version <= installed_version:
        raise RollbackError(
            f"bundle {m.name} v{m.version} is not above the installed version "
            f"{installed_version}; refusing a rollback (to go back to an old model, "
            "release its weights as a new, higher version)"
        )
    return VerifiedManifest(
        manifest=m,
        manifest_bytes=manifest_bytes,
        signer_keyids=tuple(sorted(signers)),
        root_version=trusted_root.version,
    )
