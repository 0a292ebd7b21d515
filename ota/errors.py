"""OTA errors: one specific class per way a bundle, root or download can be refused.

Every class subclasses `OtaError`, itself an `EdgeAgentError`, so callers can catch
the whole family or one attack. Messages say what was wrong and what to do.
"""

from __future__ import annotations

from edge_agent.errors import EdgeAgentError

__all__ = [
    "AgentVersionError",
    "BundleFormatError",
    "ChannelStaleError",
    "DownloadError",
    "ExpiredError",
    "GoldenVectorError",
    "HashMismatchError",
    "KeyFileError",
    "NotDirectedError",
    "OtaError",
    "ProfileMismatchError",
    "RollbackError",
    "RootRotationError",
    "SignatureError",
    "SizeLimitError",
    "TargetMismatchError",
    "ThresholdError",
    "TransferTooSlowError",
    "TrustStoreError",
    "UnsafePathError",
]


class OtaError(EdgeAgentError):
    """Root of every refusal of a bundle, root document, key or download."""


class SignatureError(OtaError):
    """No valid signature from a trusted key: unsigned, wrong key, or edited after signing."""


class ThresholdError(OtaError):
    """Some trusted keys signed, but fewer than the root's threshold."""


class ExpiredError(OtaError):
    """A manifest or root document is past its expiry (freeze attack, or stale metadata)."""


class RollbackError(OtaError):
    """The bundle's version is not above the highest installed one."""


class ProfileMismatchError(OtaError):
    """The bundle was not built for this device's hardware profile (mix-and-match)."""


class ChannelStaleError(ExpiredError):
    """The update channel's timestamp (or root) has expired: the repository stopped
    vouching for its current state (indefinite freeze). The serving model is kept."""


class TargetMismatchError(OtaError):
    """The director names a target the image repository does not list with the same
    length and hashes (mix-and-match, a compromised director key alone)."""


class NotDirectedError(OtaError):
    """The director names no target for this device or its group."""


class AgentVersionError(OtaError):
    """The bundle needs a newer agent than the one running."""


class HashMismatchError(OtaError):
    """A payload file's sha256 differs from the signed manifest."""


class SizeLimitError(OtaError):
    """More data than declared or allowed (endless data attack, oversized file)."""


class UnsafePathError(OtaError):
    """An archive member is absolute, climbs out with `..`, or is a link or device."""


class DownloadError(OtaError):
    """A bundle could not be fetched (network, file, HTTP status, truncated transfer)."""


class TransferTooSlowError(DownloadError):
    """A download crawled below the minimum rate or ran past its deadline (slow retrieval)."""


class TrustStoreError(OtaError):
    """A trusted root stored on this device (or its installed root file) is unreadable
    or damaged: local damage, not a refusal by the server. The message names the file
    and the fix."""


class RootRotationError(OtaError):
    """A new root document is not a valid successor of the trusted one."""


class BundleFormatError(OtaError):
    """A bundle, manifest, signature list or root document is malformed."""


class KeyFileError(OtaError):
    """A key file is missing, unreadable, or not an Ed25519 key."""


class GoldenVectorError(OtaError):
    """The model's golden vectors do not reproduce (the check every device runs)."""
