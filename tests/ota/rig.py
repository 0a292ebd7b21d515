"""An in-process device for updater tests: a real pipeline fed with the synthetic signal
from a thread, a real Updater on a real slot store, and real signed bundles."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from conftest import NOW, Env
from otamodels import FP32

from edge_agent.config import OtaConfig, SourceSpec, StreamConfig
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import load_model
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from edge_agent.sources.synthetic import Options
from edge_agent.streams import build_policy
from edge_agent.updates.updater import Updater, UpdateTarget
from ota.announce import Announcement
from ota.build import plan_bundle
from ota.bundle import add_signatures, read_header, write_bundle
from ota.signing import sign_bytes

PROFILE = Profile(name="rpi5")
SHADOW, TRIAL = 40, 60


def make_bundle(env: Env, model_dir: Path, name: str) -> Path:
    plan = plan_bundle(
        model_dir,
        profiles=["rpi5"],
        created=NOW - timedelta(hours=1),
        expires=NOW + timedelta(days=30),
        min_agent_version="0.1.0",
    )
    out = env.tmp / name
    write_bundle(out, plan.manifest, plan.sources)
    data = read_header(out).manifest_bytes
    add_signatures(out, [sign_bytes(k, data) for k in env.keys[:2]])
    return out


def announce(bundle: Path, url: str | None = None) -> bytes:
    h = read_header(bundle)
    return Announcement(
        manifest=json.loads(h.manifest_bytes),
        signatures=h.signatures,
        url=url or bundle.resolve().as_uri(),
        size=bundle.stat().st_size,
        sha256=hashlib.sha256(bundle.read_bytes()).hexdigest(),
        ts=NOW,
    ).to_payload()


@dataclass
class Feeder:
    """Feeds the synthetic signal, without its anomalies, into the pipeline from a thread;
    `gain` scales it. Without anomalies because the feeder runs far ahead of real time
    and which stretch of signal a shadow or trial sees depends on how fast the machine
    is: about a quarter of the 40-window stretches hold part of an anomaly, where the
    active model alarms on more than 5 % of windows. A test wants an excursion: `gain`."""

    pipeline: StreamPipeline
    gain: float = 1.0
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        sig = SyntheticSignal(SignalSpec(anomalies=False))
        seq, n = 0, 32
        while not self.stop.is_set():
            samples = (sig.render(seq, n) * self.gain).astype(np.float32)
            try:
                self.pipeline.process(Block(samples, seq / 100.0, seq, 100.0))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))
                return
            seq += n
            time.sleep(0.001)


@dataclass
class Rig:
    env: Env
    pipeline: StreamPipeline
    updater: Updater
    feeder: Feeder
    published: list[dict[str, Any]]

    @property
    def states(self) -> list[str]:
        return [p["state"] for p in self.published]


def ota_config(env: Env, **kw: Any) -> OtaConfig:
    """Test OTA settings: bundles may come from the test's own directory (file://)."""
    kw.setdefault("shadow_windows", SHADOW)
    kw.setdefault("trial_windows", TRIAL)
    kw.setdefault("local_bundle_dir", str(env.tmp))
    return OtaConfig(**kw)


@contextmanager
def make_rig(env: Env, profile: Profile = PROFILE, **updater_kw: Any) -> Iterator[Rig]:
    model = load_model(FP32, profile)
    sc = StreamConfig(name="vib", source=SourceSpec("synthetic", Options()))
    pipe = StreamPipeline("vib", model, build_policy(sc, model), window=64, hop=16)
    published: list[dict[str, Any]] = []
    up = Updater(
        state_dir=env.tmp / "state",
        ota=ota_config(env),
        profile=profile,
        root=env.root,
        targets=[UpdateTarget(pipe, sc)],
        publish=published.append,
        clock=NOW.timestamp,
        **updater_kw,
    )
    feeder = Feeder(pipe)
    t = threading.Thread(target=feeder.run, daemon=True)
    t.start()
    try:
        yield Rig(env, pipe, up, feeder, published)
    finally:
        feeder.stop.set()
        up.stop()
        t.join(5)
    assert not feeder.errors
