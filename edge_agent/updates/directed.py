"""The updater's TUF channel side (image + director repositories): refresh on the
updater's schedule (with jitter; at once on an MQTT hint, which carries no trust) and
install what the director names for this device or its group -- a target both
repositories name with the same length and hashes (`edge_agent.updates.channel`, with
python-tuf's ngclient). From the download on it is the same path as an announced
bundle (`Updater._install_and_try`): verified, unpacked into the inactive slot,
validated, shadowed, promoted, tried, committed or rolled back.

Functions of the `Updater` they work for (its state, its steps); python-tuf is only
imported by `edge_agent.updates.channel`, when a channel is configured.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.updates.job import Job, RefusedError, StoppedError, utc
from edge_agent.updates.record import TargetId
from edge_agent.updates.slots import PRE_PROMOTION
from ota.errors import (
    AgentVersionError,
    BundleFormatError,
    ChannelStaleError,
    DownloadError,
    NotDirectedError,
    OtaError,
    ProfileMismatchError,
)
from ota.manifest import parse_agent_version
from ota.verify import VerifiedManifest

if TYPE_CHECKING:
    from edge_agent.updates.channel_types import DirectedTarget
    from edge_agent.updates.updater import Updater, UpdateTarget

__all__ = ["JITTER", "channel_snapshot", "check_channel"]

log = logging.getLogger(__name__)

JITTER = 0.1  # the refresh period varies by +- this fraction, so a fleet spreads out


def check_channel(up: Updater) -> str:
    """Refresh the channel now and apply what the director names for this device;
    returns the last outcome ("idle" when nothing is directed or all is current)."""
    assert up.channel is not None
    now_mono = time.monotonic()
    up.last_refresh_mono = now_mono
    up._next_refresh = now_mono + up.refresh_s * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - jitter
    up.last_refresh = up._clock()
    was = up.channel_note
    try:
        directed = _refresh(up)
    except StoppedError:
        log.info("OTA: stopped during a refresh of the update channel")
        return "stopped"
    except OtaError as e:
        return _refresh_refused(up, e, was)
    up.channel_note = ""
    result = "idle"
    for dt in directed:
        try:
            result = apply_directed(up, dt)
        except StoppedError:
            log.info("OTA: stopped during the update of v%s; resumes on restart", dt.version)
            if up.store.state.phase in PRE_PROMOTION:
                up.store.abandon("agent stopping", utc(up._clock()))
            return "stopped"
        finally:
            up.candidate = None
    if result == "idle":
        _recovered(up, was)
    return result


def _refresh(up: Updater) -> list[DirectedTarget]:
    """The channel's refresh on a helper thread, as a download runs: manual requests
    (rollback) are answered meanwhile, and a stopping agent cancels it (StoppedError;
    a trust worker is killed). A repository that sends its metadata slowly, yet above
    the minimum rate, may hold a refresh for minutes."""
    channel = up.channel
    assert channel is not None
    got: list[list[DirectedTarget]] = []
    up._download(lambda cancel: got.append(channel.refresh(cancel)))
    return got[0]


def _refresh_refused(up: Updater, e: OtaError, was: str) -> str:
    """A refresh that named nothing to install: its outcome, said once (not at every
    scheduled refresh) and kept as the channel's note for status."""
    if isinstance(e, NotDirectedError):
        up.channel_note = str(e)
        _recovered(up, was)
        return "idle"
    note = f"{type(e).__name__}: {e}"
    if isinstance(e, ChannelStaleError):  # the serving model is not touched
        state, note, detail = "stale", str(e), str(e)
    elif isinstance(e, DownloadError):
        # A server that is down or slow, a cut transfer, a worker stopped: nothing was
        # judged; the next refresh (scheduled or hinted) tries again.
        state, detail = "failed", f"{note}; refreshed again later"
    else:
        state, detail = "rejected", note
    if note != up.channel_note:
        up._set_state(state, None, detail=detail)
    up.channel_note = note
    return state


def _recovered(up: Updater, was: str) -> None:
    """After a refresh that read the channel and found nothing to do, a state the
    channel's trouble set (stale, a refused or unreachable repository) no longer holds:
    back to idle, once. Status and the retained state/ota summary follow `up.state`;
    ota/state carries update steps and verdicts only (its schema has no "idle")."""
    if not was or up.state not in ("stale", "rejected", "failed"):
        return
    detail = "update channel refreshed: nothing to do"
    with up._lock:
        up.state = "idle"
        up.events.append({"ts": up._clock(), "state": "idle", "version": None, "detail": detail})
    log.info("OTA: idle %s (was: %s)", detail, up._public(was))


def apply_directed(up: Updater, dt: DirectedTarget) -> str:
    """Install a target both repositories name (verified by ngclient: length and
    hashes signed by the image repository's targets keys)."""
    try:
        job, targets = admit_directed(up, dt)
    except RefusedError as f:
        # Said once per direction, not at every scheduled refresh.
        if f.state != "idle" and up._last_refusal != (dt.path, f.reason):
            if f.state == "rejected":
                # The retained state/ota summary carries why (a fleet view or a rollout
                # judges the device by it), not only the passing ota/state event.
                up.last_result = f"rejected v{dt.version}: {f.reason}"
            up._set_state(f.state, dt.version, detail=f.reason)
        up._last_refusal = (dt.path, f.reason)
        return f.state
    up._last_refusal = None
    channel = up.channel
    assert channel is not None
    bundle = up.downloads / f"{job.tid.key}.bundle"
    up.downloads.mkdir(parents=True, exist_ok=True)
    up._clean_downloads(keep=job.tid.key)
    try:
        up._set_state("downloading", dt.version, detail=dt.path)
        up._download(lambda cancel: channel.download(dt, bundle, cancel))
        up._pause("download")
        up._set_state("verifying", dt.version)
    except OtaError as e:
        bundle.unlink(missing_ok=True)
        return up._download_failed(job, e)
    try:
        vm = check_directed(up, bundle, dt)
    except AgentVersionError as e:  # an agent upgrade changes this verdict: retried
        bundle.unlink(missing_ok=True)
        return up._download_failed(job, e)
    except OtaError as e:
        # The bytes are the ones both repositories signed (length and hashes checked), so
        # what they say is final: another download would be refused the same way. Tried
        # again only when the director names a new version.
        bundle.unlink(missing_ok=True)
        reason = f"{type(e).__name__}: {e}"
        up._finish(job.tid, f"failed v{dt.version}: {reason}")
        up._set_state("failed", dt.version, detail=f"{reason}; not tried again")
        return "failed"
    try:
        evidence = channel.evidence(dt)
    except OtaError as e:
        bundle.unlink(missing_ok=True)
        return up._download_failed(job, e)
    return up._install_and_try(job, (bundle, vm), targets, evidence)


def admit_directed(up: Updater, dt: DirectedTarget) -> tuple[Job, list[UpdateTarget]]:
    """Whether to fetch a directed target; RefusedError ("idle" when there is
    nothing to do) when not."""
    tid = TargetId(dt.name, dt.version, dt.sha256)
    active = up.store.active_manifest()
    if active is not None and (active.name, active.version) == (dt.name, dt.version):
        raise RefusedError("idle", "serving it already")
    targets = [t for t in up.targets if t.family == dt.family]
    if not targets:
        raise RefusedError("rejected", f"no stream here serves model family {dt.family!r}")
    serving = [t.pipeline.model.card.version for t in targets]
    installed = max(up.store.state.highest_committed_version, *serving)
    if dt.version in serving:
        raise RefusedError("idle", "serving it already (bundled)")
    restore = _restorable(up, tid, installed)
    if dt.version <= installed and not restore:
        raise RefusedError(
            "rejected",
            f"RollbackError: the director names {dt.name} v{dt.version}, not above the "
            f"installed v{installed}; an old model returns as a new version",
        )
    if up.record.outcome(tid) is not None and not restore:
        raise RefusedError("idle", "tried here; the director must name a new version")
    failures = 0
    pending = up._channel_retry
    if pending is not None and pending[0] == tid.key:
        failures = pending[1]
        # A hint flood refreshes the metadata; the same target waits out its backoff.
        if time.monotonic() < pending[2]:
            raise RefusedError("idle", f"{dt.path}: download failed; waiting to try again")
    what = "directed"
    if restore:
        what = f"directed; restoring committed v{dt.version}, whose slot was lost"
    up._set_state("announced", dt.version, detail=f"{dt.path} {what}")
    up._begin_attempt(tid)
    return Job(None, b"", None, tid, None, dt.length, installed, failures), targets


def _restorable(up: Updater, tid: TargetId, installed: int) -> bool:
    """A committed version whose slot the start-up check dropped (files missing or
    changed on disk) may be installed again -- the full path, validate to commit -- but
    only the exact signed target committed here (same name, version and sha256) and
    only at the anti-rollback mark itself: nothing below it, and nothing that was
    rolled back or failed here (its outcome is then no longer "committed")."""
    st = up.store.state
    return (
        st.lost_version == tid.version == st.highest_committed_version == installed
        and up.record.committed(tid)
    )


def check_directed(up: Updater, bundle: Path, dt: DirectedTarget) -> VerifiedManifest:
    """The file's hash was checked against the image repository's signed targets;
    its manifest must name the same model and version, suit this device, and every
    payload file must match it. Only then is a slot claimed."""
    # the bundle reader and unpacker (tarfile) load when a download is checked, not
    # with every agent that has a channel (issue 15)
    from ota.bundle import read_header
    from ota.unpack import check_payload

    header = read_header(bundle)
    m = header.manifest
    if (m.name, m.version, m.family) != (dt.name, dt.version, dt.family):
        raise BundleFormatError(
            f"{dt.path}: the bundle holds {m.name} v{m.version} ({m.family}), the "
            f"signed target says {dt.name} v{dt.version} ({dt.family})"
        )
    if up.profile.name not in m.profiles:
        raise ProfileMismatchError(
            f"{dt.path} targets {', '.join(m.profiles)}, not {up.profile.name!r}"
        )
    if parse_agent_version(__version__) < parse_agent_version(m.min_agent_version):
        raise AgentVersionError(f"{dt.path} needs agent >= {m.min_agent_version}")
    assert up.channel is not None
    vm = VerifiedManifest(
        manifest=m,
        manifest_bytes=header.manifest_bytes,
        signer_keyids=(),
        root_version=up.channel.root_versions.get("image", 0),
    )
    check_payload(bundle, vm)
    return vm


def channel_snapshot(up: Updater) -> dict[str, Any] | None:
    if up.channel is None:
        return None
    from edge_agent.updates.updater import ANNOUNCEMENTS_IGNORED

    return {
        "trusted_root_versions": dict(up.channel.root_versions),
        "last_refresh": up.last_refresh,
        "note": up.channel_note,
        "announcements": ANNOUNCEMENTS_IGNORED if up.ignored_announcements else "",
    }
