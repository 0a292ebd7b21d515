"""The device side of OTA: announcement in, a verified, validated, shadowed, promoted and
committed model out -- or a refusal, an abandon or a rollback, each reported.

Runs on its own thread (the stream threads keep scoring). Steps, each published on
`<prefix>/<device>/ota/state` and shown in status:
  announced -> verify the announced manifest (before any download) -> downloading (on a
  helper thread: size bound from the signed manifest, deadline and minimum rate; manual
  rollback is answered meanwhile) -> verifying (the file's own header and every payload
  hash) -> only now is the inactive slot claimed: unpack -> validating (loads, golden
  vectors, latency budget) -> shadow (beside the active model on live windows) ->
  promoted (slot pointer, then model swap at a batch boundary) -> trial -> committed, or
  rolled_back / rejected / failed.
Nothing unsigned is bookkeeping: outcomes, attempts, retries and download names are keyed
by the verified target's identity (`edge_agent.updates.record`). What the announcement
adds around the signed manifest (URL, size, hash) is a hint: a file that does not match
the signed target is a failed download (discarded, retried with backoff), never a verdict;
when it is exactly the announced bytes, that announcement is not retried
(`edge_agent.updates.bad_files`).
Decisions are in `edge_agent.updates.checks` (pure); slot files in `edge_agent.updates.store`;
the TUF channel's side (refresh, director's targets) in `edge_agent.updates.directed`.

Test-only fault hook: with `EDGE_AGENT_OTA_PAUSE_AT=<step>` (download, unpack, validate,
shadow, promote, commit) the updater writes `<state_dir>/ota/paused-at-<step>` and waits
there until the agent stops, so a test can SIGKILL it at exactly that step.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent import __version__
from edge_agent.config import OtaConfig, StreamConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.fsutil import atomic_write_bytes
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.updates.bad_files import BadFiles, MalformedAsAnnouncedError, Wrapper, delivered
from edge_agent.updates.checks import (
    AlarmRule,
    ShadowTally,
    TrialTally,
    Verdict,
    judge_latency,
    judge_shadow,
    judge_trial,
)
from edge_agent.updates.job import MAX_ATTEMPTS, utc
from edge_agent.updates.job import Job as _Job
from edge_agent.updates.job import RefusedError as _RefusedError
from edge_agent.updates.job import StoppedError as _StoppedError
from edge_agent.updates.record import RECORD_FILE, TargetId, UpdateRecord
from edge_agent.updates.root_file import load_root
from edge_agent.updates.seal import TufEvidence
from edge_agent.updates.slots import PRE_PROMOTION
from edge_agent.updates.store import SlotStore
from ota.announce import Announcement, is_hint
from ota.canonical import canonical_bytes
from ota.errors import (
    BundleFormatError,
    DownloadError,
    OtaError,
    SignatureError,
    TransferTooSlowError,
)
from ota.fetch import FetchLimits, fetcher_for, partial_path
from ota.root import Root
from ota.verify import VerifiedManifest, verify

# What only an update in progress uses (the shadow run, the calibration carried over, the
# bundle reader and unpacker with tarfile, the channel's install path) is imported where
# that step runs: an agent waiting for announcements does not keep it resident (issue 15).
if TYPE_CHECKING:  # python-tuf is imported only where a channel is refreshed
    from edge_agent.updates.calib_carry import CalibrationHolder, StreamRun
    from edge_agent.updates.channel_types import Channel
    from edge_agent.updates.shadow import ShadowRunner

__all__ = [
    "MAX_ATTEMPTS",
    "PAUSE_ENV",
    "PAUSE_STEPS",
    "UpdateTarget",
    "Updater",
    "load_root",
]

log = logging.getLogger(__name__)

# ota.verify.verify's signature: (manifest bytes, signatures, root, installed version,
# profile, now, *, agent_version) -> VerifiedManifest
Verifier = Callable[..., VerifiedManifest]
PAUSE_ENV = "EDGE_AGENT_OTA_PAUSE_AT"
PAUSE_STEPS = ("download", "unpack", "validate", "shadow", "promote", "commit")
INBOX_SIZE = 4  # announcements waiting for the worker; more are dropped (they are retained)
JOBS_SIZE = 4  # manual requests waiting for the updater thread
LATENCY_BATCH = 16  # windows per timed batch when checking the latency budget
LATENCY_RUNS = 5
TRIAL_POLL_S = 0.02
WAIT_POLL_S = 0.2  # how often a wait (download, shadow) answers manual requests
HISTORY_SHOWN = 10
DEFAULT_REFRESH_S = 3600.0  # channel refresh period (+- JITTER, so a fleet spreads out)
HINT_MIN_S = 5.0  # MQTT hints move the next refresh forward at most this often
# A device with a channel has one trust path: announcements (the legacy flow) are not acted on.
ANNOUNCEMENTS_IGNORED = (
    "announcement ignored: this device follows the TUF update channel (ota.image_url, "
    "ota.director_url), which alone decides what it installs; an MQTT message only "
    "makes it refresh the channel"
)


@dataclass
class _Retry:
    """A verified target whose download failed, to be tried again at `due` (monotonic)."""

    payload: bytes
    tid: TargetId
    failures: int
    due: float
    passed: int = 0  # newer announcements taken while this was due (bounded: no starving)


@dataclass(frozen=True)
class UpdateTarget:
    """A stream the slot's model serves: its pipeline and config (for the alarm policy),
    and what status shows of its calibration (kept to what is applied)."""

    pipeline: StreamPipeline
    config: StreamConfig
    status: CalibrationHolder | None = None

    @property
    def family(self) -> str:
        return self.pipeline.model.card.family


class Updater:
    def __init__(
        self,
        *,
        state_dir: Path,
        ota: OtaConfig,
        profile: Profile,
        root: Root | None,
        targets: Sequence[UpdateTarget],
        publish: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
        rule: AlarmRule | None = None,
        store: SlotStore | None = None,
        fetch_limits: FetchLimits | None = None,
        verifier: Verifier = verify,
        channel: Channel | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.ota = ota
        self.profile = profile
        self.root = root
        self.targets = list(targets)
        self._publish_cb = publish
        self._clock = clock
        self.rule = rule or AlarmRule()
        self.fetch_limits = fetch_limits or FetchLimits()
        # ota.verify.verify, or the same in a trust worker (the agent: no cryptography
        # resident; edge_agent.updates.trust_worker.verify_isolated)
        self._verifier = verifier
        self.dir = self.state_dir / "ota"
        self.downloads = self.dir / "downloads"
        # One SlotStore per process: it caches the state, so two would overwrite each other.
        self.store = store or SlotStore(self.state_dir)
        self._inbox: queue.Queue[bytes] = queue.Queue(maxsize=INBOX_SIZE)
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(maxsize=JOBS_SIZE)
        self._retry: _Retry | None = None
        self._bad_files = BadFiles()  # announced files whose exact bytes were refused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.state = "idle"
        self.candidate: dict[str, Any] | None = None
        self.last_result = ""
        self.figures: dict[str, Any] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=HISTORY_SHOWN)
        self.dropped_announcements = 0
        self.ignored_announcements = 0  # with a channel: announcements refused unread
        self.record = UpdateRecord(self.dir / RECORD_FILE)
        self.channel = channel
        self.refresh_s = refresh_s
        self.channel_note = ""  # e.g. "update channel stale since ...", for status
        self.last_refresh: float | None = None  # wall clock of the last refresh that ran
        self.last_refresh_mono: float | None = None
        self._next_refresh = 0.0  # monotonic; 0: at once
        # A failed channel download: (target key, failures, monotonic time it may be
        # fetched again). Hints refresh the metadata but do not cut this backoff short.
        self._channel_retry: tuple[str, int, float] | None = None
        self._last_refusal: tuple[str, str] | None = None
        self._pause_at = os.environ.get(PAUSE_ENV, "")
        self._clean_downloads(keep=None)

    # -- files -----------------------------------------------------------------------
    def _clean_downloads(self, keep: str | None) -> None:
        """Completed downloads are only kept while their update runs; the part of the
        target being fetched (`keep`, a signed identity) is resumed, others go: bounded."""
        if not self.downloads.is_dir():
            return
        for p in self.downloads.iterdir():
            if keep is None and p.name.endswith(".part"):
                continue  # at start: the retained announcement will resume it
            if keep is None or not p.name.startswith(keep):
                p.unlink(missing_ok=True)

    def _local_dir(self) -> Path | None:
        d = self.ota.local_bundle_dir
        return Path(d) if d else None

    def _public(self, text: str) -> str:
        """A detail for the public ota/state topic: no local paths of this device."""
        paths: list[tuple[Path | None, str]] = []
        if self.channel is not None:  # named by their config keys (most specific first)
            cfg = self.channel.cfg
            paths += [(cfg.image_root, "<ota.image_root_file>")]
            paths += [(cfg.director_root, "<ota.director_root_file>")]
        paths += [(self.state_dir, "<state_dir>"), (self._local_dir(), "<local>")]
        for path, name in paths:
            if path is not None:
                text = text.replace(str(path.resolve()), name).replace(str(path), name)
        return text

    # -- threads ---------------------------------------------------------------------
    def on_announcement(self, payload: bytes) -> None:
        """From the MQTT thread: queue only (the worker verifies). With an update
        channel any message on the OTA topics is only a hint to refresh it: an
        announcement, signed or not, is never acted on (one trust path: the channel)."""
        if self.channel is not None:
            self.on_hint()
            if not is_hint(payload):
                self._ignore_announcement()
            return
        try:
            self._inbox.put_nowait(payload)
        except queue.Full:
            self.dropped_announcements += 1
            log.warning("OTA: announcement dropped, %d waiting (it is retained)", INBOX_SIZE)

    def _ignore_announcement(self) -> None:
        """Count and say (once loudly, then quietly: retained ones return on every
        reconnect) that an announcement was refused because a channel is configured.
        Not published as an OTA state: it changes nothing on this device."""
        with self._lock:
            self.ignored_announcements += 1
            n = self.ignored_announcements
        (log.warning if n == 1 else log.info)("OTA: %s (%d so far)", ANNOUNCEMENTS_IGNORED, n)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="ota-updater", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The worker thread runs (for the agent's supervisor)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def call_between_updates(self, job: Callable[[], None]) -> bool:
        """Run `job` on the updater's thread: between updates, or while an update waits
        (download, shadow, trial), so it is answered within a fraction of a second. The
        job sees the slot phase and refuses what it must not do in it. False if too many
        jobs wait."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    def report(self, state: str, version: int | None, detail: str) -> None:
        """Record and publish a state change made outside an update (manual rollback)."""
        self._set_state(state, version, detail=detail)

    def _run_jobs(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            try:
                job()
            except Exception:  # the updater must never take the agent down
                log.exception("OTA: job failed unexpectedly")

    def on_hint(self) -> None:
        """An MQTT "refresh now" hint (from any thread). It carries no trust: it only
        moves the next refresh of the channel forward (at most one per HINT_MIN_S)."""
        soonest = (self.last_refresh_mono or -HINT_MIN_S) + HINT_MIN_S
        self._next_refresh = max(0.0, min(self._next_refresh, soonest))

    def _refresh_due(self) -> bool:
        return self.channel is not None and time.monotonic() >= self._next_refresh

    def _work(self) -> None:
        while not self._stop.is_set():
            self._run_jobs()
            if self._refresh_due():
                try:
                    self.check_channel()
                except Exception:  # the updater must never take the agent down
                    log.exception("OTA: channel check failed unexpectedly")
                    self._release_claim("internal error")
                    self._set_state("failed", None, detail="internal error (see the log)")
                continue
            r = self._retry
            payload: bytes | None = None
            due = r is not None and time.monotonic() >= r.due
            if r is not None and due and r.passed < INBOX_SIZE:
                # A newer announcement waiting goes before the retry of an older one: it
                # may replace it (a retry fired meanwhile would be reported as its outcome).
                try:
                    payload = self._inbox.get_nowait()
                    r.passed += 1
                except queue.Empty:
                    pass
            if payload is None and r is not None and due:
                log.info("OTA: trying the download of %s again (failure %d)", r.tid, r.failures)
                payload = r.payload
            elif payload is None:
                try:
                    payload = self._inbox.get(timeout=WAIT_POLL_S)
                except queue.Empty:
                    continue
            try:
                self.process(payload)
            except Exception:  # the updater must never take the agent down
                log.exception("OTA: update failed unexpectedly")
                self._release_claim("internal error")
                self._set_state("failed", None, detail="internal error (see the log)")

    def _release_claim(self, reason: str) -> None:
        """Never leave a claimed slot behind an unexpected error: the next update must
        find the store at rest."""
        try:
            if self.store.state.phase in PRE_PROMOTION:
                self.store.abandon(reason, utc(self._clock()))
        except Exception:  # best effort; recovery on restart does the rest
            log.exception("OTA: cannot release the claimed slot")

    # -- reporting -------------------------------------------------------------------
    def _set_state(
        self,
        state: str,
        version: int | None,
        *,
        slot: str | None = None,
        detail: str = "",
        figures: dict[str, Any] | None = None,
    ) -> None:
        from edge_agent.reporting.payloads import ota_state_body

        detail = self._public(detail)
        with self._lock:
            self.state = state
            if figures:
                self.figures = dict(figures)
            self.events.append(
                {"ts": self._clock(), "state": state, "version": version, "detail": detail}
            )
        # a channel-level state concerns no version: not "vNone"
        log.info("OTA: %s%s %s", state, "" if version is None else f" v{version}", detail)
        if self._publish_cb is not None:
            try:
                self._publish_cb(
                    ota_state_body(
                        state=state, version=version, slot=slot, detail=detail, figures=figures
                    )
                )
            except EdgeAgentError as e:
                log.warning("OTA: cannot publish state %s: %s", state, e)

    def snapshot(self) -> dict[str, Any]:
        s = self.store.state
        with self._lock:
            return {
                "enabled": True,
                "state": self.state,
                "phase": s.phase.value,
                "active_slot": None if s.active is None else s.active.value,
                "active_version": s.active_version,
                "committed": s.committed,
                "highest_committed_version": s.highest_committed_version,
                "candidate": self.candidate,
                "last_result": self.last_result or s.last_result,
                "figures": self.figures,
                "serving": {t.config.name: t.pipeline.model.card.version for t in self.targets},
                "dropped_announcements": self.dropped_announcements,
                "ignored_announcements": self.ignored_announcements,
                "retry": self._retry_snapshot(),
                "bad_slots": {k.value: why for k, why in s.bad.items()},
                "channel": self._channel_snapshot(),
                "events": list(self.events),
                "history": [h.to_dict() for h in s.history[-HISTORY_SHOWN:]],
            }

    def _channel_snapshot(self) -> dict[str, Any] | None:
        if self.channel is None:
            return None
        from edge_agent.updates import directed

        return directed.channel_snapshot(self)

    def _retry_snapshot(self) -> dict[str, Any] | None:
        r = self._retry
        if r is None:
            return None
        left = max(0.0, r.due - time.monotonic())
        return {"version": r.tid.version, "failures": r.failures, "in_s": round(left, 1)}

    def _pause(self, step: str) -> None:
        """Test-only fault hook (see module docstring)."""
        if self._pause_at != step:
            return
        atomic_write_bytes(self.dir / f"paused-at-{step}", str(os.getpid()).encode())
        log.warning("OTA: paused at %s (%s set)", step, PAUSE_ENV)
        while not self._stop.wait(0.1):
            self._run_jobs()
        raise _StoppedError

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _StoppedError

    def _finish(self, tid: TargetId, result: str) -> None:
        self.record.finish(tid, result, self._clock())
        self.last_result = result

    def _begin_attempt(self, tid: TargetId) -> None:
        """Count one more try of `tid` (announced or directed) and make it the candidate;
        a target interrupted MAX_ATTEMPTS times (crash, stop) is given up instead."""
        attempts = self.record.begin_attempt(tid)
        if attempts > MAX_ATTEMPTS:
            result = f"v{tid.version} given up after {MAX_ATTEMPTS} interrupted attempts"
            self._finish(tid, result)
            raise _RefusedError("failed", result)
        self.candidate = {"version": tid.version, "name": tid.name, "attempt": attempts}

    # -- one announcement ------------------------------------------------------------
    def process(self, payload: bytes) -> str:
        """Handle one announcement to its end; returns the final state (or "ignored").
        With a channel configured announcements are not read at all ("ignored")."""
        if self.channel is not None:
            self._ignore_announcement()
            return "ignored"
        try:
            ann = Announcement.from_payload(payload)
        except OtaError as e:  # unsigned junk: reported, never remembered
            self._set_state("rejected", None, detail=f"malformed announcement: {e}")
            return "rejected"
        raw_v = ann.manifest.get("version")
        v = raw_v if type(raw_v) is int else None
        try:
            return self._apply(ann, payload, v)
        except _StoppedError:
            log.info("OTA: stopped during the update of v%s; resumes on restart", v)
            if self.store.state.phase in PRE_PROMOTION:
                self.store.abandon("agent stopping", utc(self._clock()))
            return "stopped"
        finally:
            self.candidate = None

    def _already_serving(self, ann: Announcement) -> bool:
        active = self.store.active_manifest()
        try:
            return active is not None and canonical_bytes(active.to_dict()) == ann.manifest_bytes
        except OtaError:
            return False

    def _apply(self, ann: Announcement, payload: bytes, v: int | None) -> str:
        if self._already_serving(ann):
            log.debug("OTA: announced v%s is the active slot's model", v)
            return "ignored"
        try:
            job, targets = self._admit(ann, payload, v)
        except _RefusedError as f:
            if f.state != "ignored":
                self._set_state(f.state, v, detail=f.reason)
            return f.state
        try:
            fetched = self._fetch_and_check(job)
        except MalformedAsAnnouncedError as m:  # the same URL and sha256 bring the same bytes
            return self._announced_file_bad(job, m.error)
        except OtaError as e:  # the file behind the unsigned URL: transient, never a verdict
            return self._download_failed(job, e)
        return self._install_and_try(job, fetched, targets)

    def _admit(
        self, ann: Announcement, payload: bytes, v: int | None
    ) -> tuple[_Job, list[UpdateTarget]]:
        """Verify the announced manifest and decide whether to fetch it; _RefusedError
        (state "rejected", "failed" or "ignored") when not. Only verdicts on a verified
        target are remembered."""
        # The family is unsigned until verified: it only picks the streams whose versions
        # set the anti-rollback floor; verification below covers the same bytes.
        fam = ann.manifest.get("family")
        targets = [t for t in self.targets if t.family == fam]
        self._set_state("announced", v, detail=f"{ann.manifest.get('name')} from {ann.url}")
        if not targets:
            raise _RefusedError("rejected", f"no stream here serves model family {fam!r}")
        serving = [t.pipeline.model.card.version for t in targets]
        installed = max(self.store.state.highest_committed_version, *serving)
        try:
            vm = self._verify(ann.manifest_bytes, ann, installed)
        except OtaError as e:  # refused before any download; nothing is remembered
            raise _RefusedError("rejected", f"{type(e).__name__}: {e}") from e
        m = vm.manifest
        tid = TargetId.of(m.name, m.version, vm.manifest_bytes)
        done = self.record.outcome(tid)
        if done is not None:
            log.debug("OTA: %s already handled here: %s", tid, done)
            raise _RefusedError("ignored", done)
        bad = self._bad_files.reason(Wrapper.of(tid.key, ann))
        if bad is not None:  # only this wrapper: the target itself is not judged
            log.info("OTA: %s from %s not fetched again: %s", tid, ann.url, bad)
            raise _RefusedError("ignored", bad)
        payload_bytes = sum(f.size for f in m.files)
        if payload_bytes > self.ota.max_bundle_bytes:
            reason = (
                f"SizeLimitError: {tid} carries {payload_bytes} bytes, over "
                f"ota.max_bundle_bytes {self.ota.max_bundle_bytes}"
            )
            self._finish(tid, f"rejected v{m.version}: {reason}")
            raise _RefusedError("rejected", reason)
        try:
            fetcher = fetcher_for(ann.url, local_root=self._local_dir(), limits=self.fetch_limits)
        except DownloadError as e:  # the unsigned URL is refused; the target is not judged
            raise _RefusedError("rejected", f"DownloadError: {e}") from e
        r = self._retry
        if r is not None and r.tid != tid:
            log.info("OTA: verified %s replaces the pending retry of %s", tid, r.tid)
        failures = r.failures if r is not None and r.tid == tid else 0
        self._retry = None
        self._begin_attempt(tid)
        from ota.bundle import bundle_size_bound

        limit = bundle_size_bound(len(vm.manifest_bytes), [f.size for f in m.files])
        return _Job(ann, payload, vm, tid, fetcher, limit, installed, failures), targets

    # -- the TUF channel (image + director repositories): edge_agent.updates.directed
    def check_channel(self) -> str:
        """Refresh the channel now and apply what the director names for this device;
        returns the last outcome ("idle" when nothing is directed or all is current)."""
        from edge_agent.updates import directed

        return directed.check_channel(self)

    def _verify(self, manifest_bytes: bytes, ann: Announcement, installed: int) -> VerifiedManifest:
        if self.root is None:
            raise SignatureError("announcements need ota.root_file (this device has none)")
        return self._verifier(
            manifest_bytes,
            ann.signatures,
            self.root,
            installed,
            self.profile.name,
            utc(self._clock()),
            agent_version=__version__,
        )

    def _fetch_and_check(self, job: _Job) -> tuple[Path, VerifiedManifest]:
        v = job.tid.version
        bundle = self.downloads / f"{job.tid.key}.bundle"
        self.downloads.mkdir(parents=True, exist_ok=True)
        self._clean_downloads(keep=job.tid.key)
        assert job.ann is not None
        assert job.fetcher is not None
        ann, fetcher = job.ann, job.fetcher
        self._set_state("downloading", v, detail=ann.url)
        fetched = False
        try:
            self._download(lambda cancel: fetcher.fetch(ann.url, bundle, job.limit, cancel))
            fetched = True
            self._pause("download")
            self._set_state("verifying", v)
            vm = self._check_download(bundle, job)
        except OtaError as e:
            exact = fetched and not isinstance(e, DownloadError) and delivered(bundle, ann)
            bundle.unlink(missing_ok=True)
            if not isinstance(e, DownloadError):  # wrong content: do not resume into it
                partial_path(bundle).unlink(missing_ok=True)
            if exact:
                raise MalformedAsAnnouncedError(e) from e
            raise
        return bundle, vm

    def _download(self, fetch: Callable[[threading.Event], object]) -> None:
        """Fetch on a helper thread; meanwhile answer manual requests and watch for stop."""
        cancel = threading.Event()
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                fetch(cancel)
            except BaseException as e:  # noqa: BLE001 - handed to the updater thread
                outcome.append(e)
            else:
                outcome.append(None)

        t = threading.Thread(target=run, name="ota-download", daemon=True)
        t.start()
        while t.is_alive():
            self._run_jobs()
            if self._stop.is_set():
                cancel.set()
                raise _StoppedError
            t.join(WAIT_POLL_S)
        err = outcome[0] if outcome else DownloadError("download thread ended without a word")
        if isinstance(err, OtaError):
            raise err
        if err is not None:
            raise DownloadError(f"download failed: {type(err).__name__}: {err}") from err

    def _check_download(self, bundle: Path, job: _Job) -> VerifiedManifest:
        """The downloaded file on its own: its header is the verified target's manifest,
        signed again by a threshold, and every payload file has its signed size and hash.
        Only after this is a slot claimed."""
        from ota.bundle import read_header
        from ota.unpack import check_payload

        header = read_header(bundle)
        assert job.vm is not None
        assert self.root is not None
        if header.manifest_bytes != job.vm.manifest_bytes:
            raise BundleFormatError(f"the downloaded file is not {job.tid}")
        vm = self._verifier(
            header.manifest_bytes,
            header.signatures,
            self.root,
            job.installed,
            self.profile.name,
            utc(self._clock()),
            agent_version=__version__,
        )
        check_payload(bundle, vm)
        return vm

    def _download_failed(self, job: _Job, e: OtaError) -> str:
        self.record.undo_attempt(job.tid)
        failures = job.failures + 1
        delay = min(self.ota.retry_min_s * 2 ** (failures - 1), self.ota.retry_max_s)
        if isinstance(e, TransferTooSlowError):  # a crawling path: let it recover first
            delay = max(delay, self.fetch_limits.rate_window_s)
        if job.payload:
            self._retry = _Retry(job.payload, job.tid, failures, time.monotonic() + delay)
        else:  # from the channel: its next refresh tries again, not before the backoff
            self._next_refresh = max(self._next_refresh, time.monotonic() + delay)
            self._channel_retry = (job.tid.key, failures, time.monotonic() + delay)
        reason = f"{type(e).__name__}: {e}"
        self.last_result = f"failed v{job.tid.version}: {reason}"
        self._set_state(
            "failed",
            job.tid.version,
            detail=f"{reason}; trying again in {delay:.0f} s (failure {failures})",
        )
        return "failed"

    def _announced_file_bad(self, job: _Job, e: OtaError) -> str:
        """The server sent exactly the announced bytes and they are refused: not retried
        (only a new announcement can help); this wrapper is remembered, not the target."""
        self.record.undo_attempt(job.tid)
        assert job.ann is not None
        reason = f"{type(e).__name__}: {e}"
        self._bad_files.add(Wrapper.of(job.tid.key, job.ann), f"failed before: {reason}")
        detail = (
            f"{reason}; not retried: the announced file itself is malformed "
            "(a new announcement is needed)"
        )
        self.last_result = f"failed v{job.tid.version}: {detail}"
        self._set_state("failed", job.tid.version, detail=detail)
        return "failed"

    def _install_and_try(
        self,
        job: _Job,
        fetched: tuple[Path, VerifiedManifest],
        targets: list[UpdateTarget],
        tuf: TufEvidence | None = None,
    ) -> str:
        bundle, vm = fetched
        v = vm.manifest.version
        store = self.store
        slot: str | None = None
        try:
            # Verified: now, and only now, the inactive slot (the rollback target) is claimed.
            cand_dir = store.begin_update(v, utc(self._clock()))
            slot = cand_dir.name
            assert self.candidate is not None
            self.candidate["slot"] = slot
            store.install_candidate(bundle, vm, utc(self._clock()), tuf)
            bundle.unlink(missing_ok=True)
            self._pause("unpack")
            self._set_state("validating", v, slot=slot)
            cand = self._validate(cand_dir, targets)
            _card_matches(cand, vm)
            store.mark_validated(utc(self._clock()))
            self._pause("validate")
            self._check_stop()
            store.mark_shadow(utc(self._clock()))
            from edge_agent.updates.calib_carry import for_stream

            runs = [for_stream(self.state_dir, t.pipeline, t.config, cand) for t in targets]
            verdict = self._shadow(cand, targets, runs, v, slot)
        except _RefusedError as f:
            bundle.unlink(missing_ok=True)
            store.abandon(f.reason, utc(self._clock()))
            self._finish(job.tid, f"{f.state} v{v}: {f.reason}")
            self._set_state(f.state, v, slot=slot, detail=f.reason, figures=f.figures)
            return f.state
        except OtaError as e:  # unpacking what was checked failed (disk?): try again later
            bundle.unlink(missing_ok=True)
            self._release_claim(f"{type(e).__name__}: {e}")
            return self._download_failed(job, e)
        except (_StoppedError, Exception):
            bundle.unlink(missing_ok=True)
            self._release_claim("interrupted")
            raise
        return self._promote_and_trial(
            job.tid, cand, list(zip(targets, runs, strict=True)), verdict, slot
        )

    def _validate(self, cand_dir: Path, targets: list[UpdateTarget]) -> LoadedModel:
        try:
            cand = load_model(cand_dir, self.profile)  # hash, load, warm-up, golden vectors
        except EdgeAgentError as e:
            raise _RefusedError("failed", f"validation: {e}") from e
        for t in targets:
            p = t.pipeline
            cp = cand.card.preprocessing
            ap = p.model.card.preprocessing
            if (len(cp.channels), cp.columns, cp.window) != (
                len(ap.channels),
                ap.columns,
                p.window,
            ):
                raise _RefusedError(
                    "failed",
                    f"validation: {cand.card.name} takes windows of {cp.window} x "
                    f"{cp.columns}, stream {t.config.name} cuts {p.window} x {ap.columns}",
                )
        verdict = judge_latency(self._window_latency_ms(cand), self.profile.window_latency_ms)
        if not verdict.ok:
            raise _RefusedError("failed", f"validation: {verdict.reason}", verdict.figures)
        self.figures = verdict.figures
        return cand

    @staticmethod
    def _window_latency_ms(model: LoadedModel) -> float:
        g = model.card.golden.inputs
        reps = -(-LATENCY_BATCH // len(g))
        batch = np.concatenate([g] * reps)[:LATENCY_BATCH].astype(np.float32)
        best = float("inf")
        for _ in range(LATENCY_RUNS):
            t0 = time.perf_counter()
            model.scores(batch)
            best = min(best, time.perf_counter() - t0)
        return best / len(batch) * 1000.0

    def _wait(self, runner: ShadowRunner) -> None:
        """Until the runner has its windows; manual requests are answered meanwhile."""
        while not runner.wait(self._stop, poll_s=0.05, timeout_s=WAIT_POLL_S):
            self._run_jobs()
            self._check_stop()

    def _shadow(
        self,
        cand: LoadedModel,
        targets: list[UpdateTarget],
        runs: list[StreamRun],
        v: int,
        slot: str,
    ) -> Verdict:
        # Each stream is judged with its own thresholds: the active model's policy on
        # that stream and the candidate's as that stream runs it (its config, and its
        # calibration where it carries over).
        from edge_agent.updates.shadow import ShadowRunner

        tally = ShadowTally()
        self._set_state(
            "shadow", v, slot=slot, detail=f"beside the active model for {self.ota.shadow_windows}"
            " windows",
        )  # fmt: skip
        runner = ShadowRunner(cand, tally, self.ota.shadow_windows)
        runner.start(
            [t.pipeline for t in targets],
            [r.policy.threshold for r in runs],
            [r.model for r in runs],
        )
        try:
            self._pause("shadow")
            self._wait(runner)
        finally:
            runner.close()
        if runner.error:
            raise _RefusedError("failed", f"shadow: candidate failed to score: {runner.error}")
        verdict = judge_shadow(tally, self.rule)
        if not verdict.ok:
            raise _RefusedError("failed", f"shadow: {verdict.reason}", verdict.figures)
        return verdict

    def _promote_and_trial(
        self,
        tid: TargetId,
        cand: LoadedModel,
        runs: list[tuple[UpdateTarget, StreamRun]],
        shadow: Verdict,
        slot: str,
    ) -> str:
        from edge_agent.updates.calib_carry import keep

        v = cand.card.version
        store = self.store
        store.promote(utc(self._clock()))  # the pointer first: a crash now rolls back
        old: list[tuple[UpdateTarget, LoadedModel, Any]] = []
        shown: list[tuple[CalibrationHolder, Any, str]] = []
        for t, run in runs:
            keep(self.state_dir, run)  # a carried calibration applies after a restart too
            prev_policy = t.pipeline.policy
            prev = t.pipeline.swap_model(run.model, run.policy)
            old.append((t, prev, prev_policy))
            if t.status is not None:  # status shows what is applied now
                shown.append((t.status, t.status.calibration, t.status.calibration_note))
                t.status.calibration, t.status.calibration_note = run.calibration, run.note
        self._set_state(
            "promoted", v, slot=slot, detail=f"on trial for {self.ota.trial_windows} windows",
            figures=shadow.figures,
        )  # fmt: skip
        try:
            verdict = self._trial(old)
        except Exception as e:  # never leave a half-tried model serving unjudged
            if isinstance(e, _StoppedError):
                raise  # left promoted: recovery on restart rolls it back
            verdict = Verdict(False, f"trial failed unexpectedly: {type(e).__name__}")
            log.exception("OTA: trial of v%s failed unexpectedly", v)
        if not verdict.ok:
            for t, prev, prev_policy in old:
                t.pipeline.swap_model(prev, prev_policy)
            for holder, cal, note in shown:
                holder.calibration, holder.calibration_note = cal, note
            now = utc(self._clock())
            store.step_back(f"trial: {verdict.reason}", now, for_cause=True)
            self._finish(tid, f"rolled back v{v}: {verdict.reason}")
            self._set_state(
                "rolled_back", v, slot=slot, detail=verdict.reason, figures=verdict.figures
            )
            return "rolled_back"
        store.commit(utc(self._clock()))
        self._pause("commit")
        self._finish(tid, f"committed v{v}")
        self._set_state("committed", v, slot=slot, detail=verdict.reason, figures=verdict.figures)
        return "committed"

    def _trial(self, old: list[tuple[UpdateTarget, LoadedModel, Any]]) -> Verdict:
        """The new model serves; the previous one runs beside it as the shadow, each
        stream with its own thresholds, so a real process anomaly during the trial (both
        alarm) does not roll a good model back."""
        from edge_agent.updates.shadow import ShadowRunner

        tally = ShadowTally()
        pipelines = [t.pipeline for t, _, _ in old]
        nonfinite0 = sum(p.stats.nonfinite_scores for p in pipelines)
        # each stream's previous model as it ran there (its own calibration)
        runner = ShadowRunner(old[0][1], tally, self.ota.trial_windows)
        runner.start(pipelines, [pp.threshold for _, _, pp in old], [m for _, m, _ in old])
        try:
            self._pause("promote")
            while True:
                trial = TrialTally(
                    windows=tally.windows,
                    nonfinite=sum(p.stats.nonfinite_scores for p in pipelines) - nonfinite0,
                    over=tally.active_over,
                )
                verdict = judge_trial(
                    trial, tally.candidate_rate, self.ota.trial_windows, self.rule
                )
                if verdict is not None:
                    return verdict
                if self._stop.wait(TRIAL_POLL_S):
                    raise _StoppedError  # left promoted: recovery on restart rolls it back
                self._run_jobs()
        finally:
            runner.close()


def _card_matches(cand: LoadedModel, vm: VerifiedManifest) -> None:
    """The unpacked card must be the model the signed manifest names: the serving card's
    version is the anti-rollback floor and what status reports. _RefusedError if not."""
    c, m = cand.card, vm.manifest
    if (c.name, c.family, c.version) != (m.name, m.family, m.version):
        raise _RefusedError(
            "failed",
            f"validation: the card says {c.name} v{c.version} ({c.family}), the signed "
            f"manifest {m.name} v{m.version} ({m.family}); rebuild with `edge-ota build`",
        )
