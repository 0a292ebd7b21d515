"""The device side of OTA: announcement in, a verified, validated, shadowed, promoted and
committed model out -- or a refusal, an abandon or a rollback, each reported.

Runs on its own thread (the stream threads keep scoring). Steps, each published on
`<prefix>/<device>/ota/state` and shown in status:
  announced -> verify the announced manifest (before any download) -> downloading (size
  enforced while reading, resumable) -> verifying (the bundle's own header) -> unpack
  into the inactive slot -> validating (loads, golden vectors, latency budget) -> shadow
  (beside the active model on live windows) -> promoted (slot pointer, then model swap at
  a batch boundary) -> trial -> committed, or rolled_back / rejected / failed.
Decisions are in `edge_agent.updates.checks` (pure); slot files in `edge_agent.updates.store`.

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.config import OtaConfig, StreamConfig
from edge_agent.errors import EdgeAgentError, StateError
from edge_agent.fsutil import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.streams import build_policy
from edge_agent.updates.checks import (
    AlarmRule,
    ShadowTally,
    TrialTally,
    Verdict,
    judge_latency,
    judge_shadow,
    judge_trial,
)
from edge_agent.updates.shadow import ShadowRunner
from edge_agent.updates.slots import PRE_PROMOTION
from edge_agent.updates.store import SlotStore
from ota.announce import Announcement
from ota.bundle import read_header
from ota.canonical import canonical_bytes
from ota.errors import BundleFormatError, HashMismatchError, OtaError, SizeLimitError
from ota.fetch import fetcher_for
from ota.root import Root, SignedRoot, trust_root
from ota.verify import VerifiedManifest, verify

__all__ = [
    "MAX_ATTEMPTS",
    "PAUSE_ENV",
    "PAUSE_STEPS",
    "UpdateTarget",
    "Updater",
    "load_root",
]

log = logging.getLogger(__name__)

PAUSE_ENV = "EDGE_AGENT_OTA_PAUSE_AT"
PAUSE_STEPS = ("download", "unpack", "validate", "shadow", "promote", "commit")
MAX_ATTEMPTS = 3  # interrupted tries of one bundle (crash, stop) before it is given up
HANDLED_KEPT = 50  # bundles remembered as handled (retained announcements come back)
INBOX_SIZE = 4  # announcements waiting for the worker; more are dropped (they are retained)
JOBS_SIZE = 4  # manual requests waiting for the updater thread
LATENCY_BATCH = 16  # windows per timed batch when checking the latency budget
LATENCY_RUNS = 5
TRIAL_POLL_S = 0.02
HISTORY_SHOWN = 10
UPDATES_FILE = "updates.json"


@dataclass
class _Retry:
    """A download that failed, to be tried again at `due` (time.monotonic)."""

    payload: bytes
    sha256: str
    version: int | None
    failures: int
    due: float


class _StoppedError(Exception):
    """The agent is stopping: leave the update where a restart can recover it."""


class _RefusedError(Exception):
    def __init__(self, state: str, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.state, self.reason, self.figures = state, reason, figures or {}


@dataclass(frozen=True)
class UpdateTarget:
    """A stream the slot's model serves: its pipeline and config (for the alarm policy)."""

    pipeline: StreamPipeline
    config: StreamConfig

    @property
    def family(self) -> str:
        return self.pipeline.model.card.family


def load_root(path: Path, now: datetime) -> Root:
    """The installed trust root, checked (self-signed threshold, not expired)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StateError(f"ota.root_file {path}: cannot read: {e.strerror or e}") from e
    return trust_root(SignedRoot.from_bytes(data), now)


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


class Updater:
    def __init__(
        self,
        *,
        state_dir: Path,
        ota: OtaConfig,
        profile: Profile,
        root: Root,
        targets: Sequence[UpdateTarget],
        publish: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
        rule: AlarmRule | None = None,
        store: SlotStore | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.ota = ota
        self.profile = profile
        self.root = root
        self.targets = list(targets)
        self._publish_cb = publish
        self._clock = clock
        self.rule = rule or AlarmRule()
        self.dir = self.state_dir / "ota"
        self.downloads = self.dir / "downloads"
        # One SlotStore per process: it caches the state, so two would overwrite each other.
        self.store = store or SlotStore(self.state_dir)
        self._inbox: queue.Queue[bytes] = queue.Queue(maxsize=INBOX_SIZE)
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(maxsize=JOBS_SIZE)
        self._retry: _Retry | None = None
        self._retry_failures = 0
        self._payload = b""  # the announcement being handled (for a retry)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.state = "idle"
        self.candidate: dict[str, Any] | None = None
        self.last_result = ""
        self.figures: dict[str, Any] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=HISTORY_SHOWN)
        self.dropped_announcements = 0
        self._record = self._load_record()
        self._pause_at = os.environ.get(PAUSE_ENV, "")
        self._clean_downloads()

    # -- persistence of what was handled ----------------------------------------------
    def _load_record(self) -> dict[str, Any]:
        try:
            raw = read_json(self.dir / UPDATES_FILE)
        except (OSError, ValueError):
            raw = None
        if not isinstance(raw, dict):
            return {"handled": [], "attempts": {}}
        raw.setdefault("handled", [])
        raw.setdefault("attempts", {})
        return raw

    def _save_record(self) -> None:
        atomic_write_json(self.dir / UPDATES_FILE, self._record)

    def handled(self, sha: str) -> bool:
        return any(h.get("sha256") == sha for h in self._record["handled"])

    def _finish(self, sha: str, version: int | None, result: str) -> None:
        handled = [h for h in self._record["handled"] if h.get("sha256") != sha]
        handled.append({"sha256": sha, "version": version, "result": result, "ts": self._clock()})
        self._record["handled"] = handled[-HANDLED_KEPT:]
        self._record["attempts"].pop(sha, None)
        self._save_record()
        self.last_result = result

    def _clean_downloads(self) -> None:
        """Completed downloads are only kept while their update runs; parts are resumed."""
        if not self.downloads.is_dir():
            return
        for p in self.downloads.iterdir():
            if not p.name.endswith(".part"):
                p.unlink(missing_ok=True)

    # -- threads ---------------------------------------------------------------------
    def on_announcement(self, payload: bytes) -> None:
        """From the MQTT thread: queue only (the worker verifies)."""
        try:
            self._inbox.put_nowait(payload)
        except queue.Full:
            self.dropped_announcements += 1
            log.warning("OTA: announcement dropped, %d waiting (it is retained)", INBOX_SIZE)

    def start(self) -> None:
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
        """Run `job` on the updater's thread when no update is in progress (e.g. a
        manual rollback, which must not interleave with an update's slot steps).
        False if too many jobs wait."""
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

    def _work(self) -> None:
        while not self._stop.is_set():
            self._run_jobs()
            r = self._retry
            if r is not None and time.monotonic() >= r.due:
                log.info(
                    "OTA: trying the download of v%s again (failure %d)", r.version, r.failures
                )
                payload = r.payload
            else:
                try:
                    payload = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
            try:
                self.process(payload)
            except Exception:  # the updater must never take the agent down
                log.exception("OTA: update failed unexpectedly")
                self._set_state("failed", None, detail="internal error (see the log)")

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

        with self._lock:
            self.state = state
            if figures:
                self.figures = dict(figures)
            self.events.append(
                {"ts": self._clock(), "state": state, "version": version, "detail": detail}
            )
        log.info("OTA: %s v%s %s", state, version, detail)
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
                "retry": self._retry_snapshot(),
                "events": list(self.events),
                "history": [h.to_dict() for h in s.history[-HISTORY_SHOWN:]],
            }

    def _retry_snapshot(self) -> dict[str, Any] | None:
        r = self._retry
        if r is None:
            return None
        left = max(0.0, r.due - time.monotonic())
        return {"version": r.version, "failures": r.failures, "in_s": round(left, 1)}

    def _pause(self, step: str) -> None:
        """Test-only fault hook (see module docstring)."""
        if self._pause_at != step:
            return
        atomic_write_bytes(self.dir / f"paused-at-{step}", str(os.getpid()).encode())
        log.warning("OTA: paused at %s (%s set)", step, PAUSE_ENV)
        while not self._stop.wait(0.1):
            pass
        raise _StoppedError

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _StoppedError

    # -- one announcement ------------------------------------------------------------
    def process(self, payload: bytes) -> str:
        """Handle one announcement to its end; returns the final state (or "ignored")."""
        try:
            ann = Announcement.from_payload(payload)
        except OtaError as e:
            self._set_state("rejected", None, detail=f"malformed announcement: {e}")
            return "rejected"
        if self.handled(ann.sha256):
            log.debug("OTA: announcement for %s already handled", ann.sha256[:12])
            return "ignored"
        r = self._retry
        if r is not None and r.sha256 != ann.sha256:
            log.info("OTA: a newer announcement replaces the pending retry of v%s", r.version)
        self._retry_failures = r.failures if r is not None and r.sha256 == ann.sha256 else 0
        self._retry = None  # this bundle is handled now; a failed download schedules anew
        self._payload = payload
        # self.store is the process's only slot store (start-up and manual rollback use
        # it too) and nothing else writes slots.json while the agent runs (`edge-agent
        # rollback` asks the agent): never replaced by a fresh read here.
        version = ann.manifest.get("version")
        v = version if isinstance(version, int) else None
        try:
            return self._apply(ann, v)
        except _StoppedError:
            log.info("OTA: stopped during the update of v%s; resumes on restart", v)
            if self.store.state.phase in PRE_PROMOTION:
                self.store.abandon("agent stopping", _utc(self._clock()))
            return "stopped"

    def _apply(self, ann: Announcement, v: int | None) -> str:
        fam = ann.manifest.get("family")
        targets = [t for t in self.targets if t.family == fam]
        self._set_state("announced", v, detail=f"{ann.manifest.get('name')} from {ann.url}")
        if not targets:
            return self._refuse(ann, v, f"no stream here serves model family {fam!r}")
        serving = [t.pipeline.model.card.version for t in targets]
        installed = max(self.store.state.highest_committed_version, *serving)
        now = _utc(self._clock())
        try:
            vm = verify(
                ann.manifest_bytes,
                ann.signatures,
                self.root,
                installed,
                self.profile.name,
                now,
                agent_version=__version__,
            )
            if ann.size > self.ota.max_bundle_bytes:
                raise SizeLimitError(
                    f"bundle of {ann.size} bytes exceeds ota.max_bundle_bytes "
                    f"{self.ota.max_bundle_bytes}"
                )
        except OtaError as e:
            active = self.store.active_manifest()
            if active is not None and canonical_bytes(active.to_dict()) == ann.manifest_bytes:
                self._finish(ann.sha256, v, f"v{v} already installed")
                return "ignored"
            return self._refuse(ann, v, f"{type(e).__name__}: {e}")
        attempts = int(self._record["attempts"].get(ann.sha256, 0)) + 1
        if attempts > MAX_ATTEMPTS:
            result = f"v{v} given up after {MAX_ATTEMPTS} interrupted attempts"
            self._finish(ann.sha256, v, result)
            self._set_state("failed", v, detail=result)
            return "failed"
        self._record["attempts"][ann.sha256] = attempts
        self._save_record()
        self.candidate = {"version": v, "name": vm.manifest.name, "attempt": attempts}
        try:
            return self._install_and_try(ann, vm, targets, installed)
        finally:
            self.candidate = None

    def _refuse(self, ann: Announcement, v: int | None, reason: str) -> str:
        self._finish(ann.sha256, v, f"rejected v{v}: {reason}")
        self._set_state("rejected", v, detail=reason)
        return "rejected"

    def _install_and_try(
        self, ann: Announcement, vm: VerifiedManifest, targets: list[UpdateTarget], installed: int
    ) -> str:
        v = vm.manifest.version
        store = self.store
        cand_dir = store.begin_update(v, _utc(self._clock()))
        slot = cand_dir.name
        assert self.candidate is not None
        self.candidate["slot"] = slot
        bundle = self.downloads / f"{ann.sha256}.bundle"
        try:
            self._set_state("downloading", v, slot=slot, detail=ann.url)
            self.downloads.mkdir(parents=True, exist_ok=True)
            fetcher_for(ann.url).fetch(ann.url, bundle, ann.size)
            self._pause("download")
            self._set_state("verifying", v, slot=slot)
            vm2 = self._verify_download(ann, bundle, installed)
            store.install_candidate(bundle, vm2, _utc(self._clock()))
            bundle.unlink(missing_ok=True)
            self._pause("unpack")
            self._set_state("validating", v, slot=slot)
            cand = self._validate(cand_dir, targets)
            store.mark_validated(_utc(self._clock()))
            self._pause("validate")
            self._check_stop()
            store.mark_shadow(_utc(self._clock()))
            verdict = self._shadow(cand, targets, v, slot)
        except _RefusedError as f:
            bundle.unlink(missing_ok=True)
            store.abandon(f.reason, _utc(self._clock()))
            self._finish(ann.sha256, v, f"{f.state} v{v}: {f.reason}")
            self._set_state(f.state, v, slot=slot, detail=f.reason, figures=f.figures)
            return f.state
        except OtaError as e:
            bundle.unlink(missing_ok=True)
            reason = f"{type(e).__name__}: {e}"
            store.abandon(reason, _utc(self._clock()))
            transient = type(e).__name__ == "DownloadError"
            if transient:  # the network or the server: try again by itself, backing off
                self.last_result = f"failed v{v}: {reason}"
                reason += self._schedule_retry(ann.sha256, v)
            else:
                self._finish(ann.sha256, v, f"rejected v{v}: {reason}")
            self._set_state("failed" if transient else "rejected", v, slot=slot, detail=reason)
            return "failed" if transient else "rejected"
        return self._promote_and_trial(ann, cand, targets, verdict, slot)

    def _schedule_retry(self, sha: str, version: int | None) -> str:
        """Plan the next try of a failed download; returns a note for the state detail.
        A download failure is no interrupted attempt: it does not count toward
        MAX_ATTEMPTS (which guards against crash loops), it only backs off."""
        failures = self._retry_failures + 1
        delay = min(self.ota.retry_min_s * 2 ** (failures - 1), self.ota.retry_max_s)
        self._retry = _Retry(self._payload, sha, version, failures, time.monotonic() + delay)
        attempts = self._record["attempts"]
        if attempts.get(sha, 0) > 0:
            attempts[sha] -= 1
            self._save_record()
        return f"; trying again in {delay:.0f} s (failure {failures})"

    def _verify_download(self, ann: Announcement, bundle: Path, installed: int) -> VerifiedManifest:
        """The downloaded file is checked on its own: same bytes as announced, and its
        header passes every check again (the announcement itself is not trusted)."""
        if sha256_file(bundle) != ann.sha256:
            raise HashMismatchError("downloaded bundle's sha256 differs from the announcement")
        header = read_header(bundle)
        if header.manifest_bytes != ann.manifest_bytes:
            raise BundleFormatError("the bundle's manifest differs from the announced one")
        return verify(
            header.manifest_bytes,
            header.signatures,
            self.root,
            installed,
            self.profile.name,
            _utc(self._clock()),
            agent_version=__version__,
        )

    def _validate(self, cand_dir: Path, targets: list[UpdateTarget]) -> LoadedModel:
        try:
            cand = load_model(cand_dir, self.profile)  # hash, load, warm-up, golden vectors
        except EdgeAgentError as e:
            raise _RefusedError("failed", f"validation: {e}") from e
        active = targets[0].pipeline.model
        for t in targets:
            p = t.pipeline
            cp = cand.card.preprocessing
            ap = active.card.preprocessing
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

    def _shadow(self, cand: LoadedModel, targets: list[UpdateTarget], v: int, slot: str) -> Verdict:
        t0 = targets[0]
        tally = ShadowTally(
            active_threshold=t0.pipeline.threshold,
            candidate_threshold=build_policy(t0.config, cand).threshold,
        )
        self._set_state(
            "shadow", v, slot=slot, detail=f"beside the active model for {self.ota.shadow_windows}"
            " windows",
        )  # fmt: skip
        runner = ShadowRunner(cand, tally, self.ota.shadow_windows)
        runner.start([t.pipeline for t in targets])
        try:
            self._pause("shadow")
            if not runner.wait(self._stop):
                raise _StoppedError
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
        ann: Announcement,
        cand: LoadedModel,
        targets: list[UpdateTarget],
        shadow: Verdict,
        slot: str,
    ) -> str:
        v = cand.card.version
        store = self.store
        store.promote(_utc(self._clock()))  # the pointer first: a crash now rolls back
        old: list[tuple[UpdateTarget, LoadedModel, Any]] = []
        for t in targets:
            prev_policy = t.pipeline.policy
            prev = t.pipeline.swap_model(cand, build_policy(t.config, cand))
            old.append((t, prev, prev_policy))
        self._set_state(
            "promoted", v, slot=slot, detail=f"on trial for {self.ota.trial_windows} windows",
            figures=shadow.figures,
        )  # fmt: skip
        # During the trial the previous model runs as the shadow: the alarm rate of the new
        # model is compared with the old one's on the same windows, so a real process
        # anomaly during the trial (both alarm) does not roll a good model back.
        t0, prev0, prev_policy0 = old[0]
        tally = ShadowTally(
            active_threshold=t0.pipeline.threshold, candidate_threshold=prev_policy0.threshold
        )
        pipelines = [t.pipeline for t in targets]
        nonfinite0 = sum(p.stats.nonfinite_scores for p in pipelines)
        runner = ShadowRunner(prev0, tally, self.ota.trial_windows)
        runner.start(pipelines)
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
                    break
                if self._stop.wait(TRIAL_POLL_S):
                    raise _StoppedError  # left promoted: recovery on restart rolls it back
        finally:
            runner.close()
        if not verdict.ok:
            for t, prev, prev_policy in old:
                t.pipeline.swap_model(prev, prev_policy)
            now = _utc(self._clock())
            store.step_back(f"trial: {verdict.reason}", now)
            self._finish(ann.sha256, v, f"rolled back v{v}: {verdict.reason}")
            self._set_state(
                "rolled_back", v, slot=slot, detail=verdict.reason, figures=verdict.figures
            )
            return "rolled_back"
        store.commit(_utc(self._clock()))
        self._pause("commit")
        self._finish(ann.sha256, v, f"committed v{v}")
        self._set_state("committed", v, slot=slot, detail=verdict.reason, figures=verdict.figures)
        return "committed"
