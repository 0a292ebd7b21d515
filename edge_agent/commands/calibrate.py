"""`edge-agent calibrate`: fit a stream's normalisation and threshold on live normal data.

Runs the stream's own source (as configured) until enough samples were seen, or for
a duration, fits (edge_agent/pipeline/calibration.py), stores
`<state_dir>/calibration/<stream>.json` and prints the result. An existing calibration is
replaced, and the old and new thresholds are logged. The running agent picks the new
calibration up on restart (the command says whether one is running).

A recording (`replay` source) is read as fast as it goes, whatever the stream's `speed`:
calibrating on 600 windows of 5-minute data must not take days. Progress goes to
stderr; the result names the channels as the source names them (the user's columns).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import AgentConfig, StreamConfig, load_config
from edge_agent.errors import CalibrationError, ConfigError, EdgeAgentError, SourceError

if TYPE_CHECKING:  # numpy and the runtimes only when calibrating: `status` stays instant
    import numpy as np
    import numpy.typing as npt

    from edge_agent.pipeline.calibration import Calibration
    from edge_agent.runtime.model import LoadedModel
    from edge_agent.sources.base import Block, Source

__all__ = ["register"]

log = logging.getLogger(__name__)

DEFAULT_WINDOWS = 600
READ_TIMEOUT_S = 0.2
PROGRESS_EVERY_S = 1.0  # at most one progress line per second
MAX_SAMPLES = 10_000_000  # memory bound for --duration on a fast source


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a stream's normalisation and threshold on this machine's normal data",
        description="Run a stream's source on normal operation, fit per-channel mean/std "
        "and the alarm threshold, and store them in <state_dir>/calibration/<stream>.json "
        "(replacing an older calibration). The model files are not modified.",
    )
    p.add_argument("--config", required=True, help="agent config file (TOML)")
    p.add_argument("--stream", help="stream name (required when several are configured)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--windows",
        type=int,
        help=f"calibrate on N windows (default: the stream's calibrate_windows, "
        f"else {DEFAULT_WINDOWS})",
    )
    g.add_argument("--samples", type=int, help="calibrate on N samples (rows of a recording)")
    g.add_argument("--duration", type=float, help="calibrate on S seconds of data")
    p.add_argument("--state-dir", help="override the config's state_dir")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    p.set_defaults(func=_calibrate)


def _pick_stream(cfg: AgentConfig, name: str | None) -> StreamConfig:
    names = [s.name for s in cfg.streams]
    if not names:
        raise ConfigError(f"{cfg.source_file}: no [[streams]] configured")
    if name is None:
        if len(names) > 1:
            raise ConfigError(f"--stream: several streams configured, pick one of {names}")
        return cfg.streams[0]
    for s in cfg.streams:
        if s.name == name:
            return s
    raise ConfigError(f"--stream: no stream {name!r} in {cfg.source_file} (have {names})")


def collect_samples(
    source: Source,
    *,
    max_samples: int,
    duration_s: float | None,
    progress: Callable[[int], None] | None = None,
    wall_clock: bool = True,
) -> npt.NDArray[np.float32]:
    """Read the source until `max_samples`, `duration_s` seconds of data, or its end;
    `progress(samples so far)` after every block.

    `duration_s` counts sample time (the source's timestamps): on a recording read
    faster than real time, 600 s means the file's first 600 s, not whatever was read in
    600 s of wall time. With `wall_clock` (live sources) the wall-clock deadline also
    ends it, so a source that stalls cannot hold the command forever."""
    import numpy as np

    blocks: list[npt.NDArray[np.float32]] = []
    n = 0
    deadline = time.monotonic() + duration_s if duration_s is not None and wall_clock else None
    t_end: float | None = None  # sample time at which --duration is reached
    source.open()
    try:
        while n < max_samples and not source.finished:
            if deadline is not None and time.monotonic() >= deadline:
                break
            blk = source.read(READ_TIMEOUT_S)
            if blk is None:
                continue
            take = blk.samples[: max_samples - n]
            done = False
            if duration_s is not None:
                times = _sample_times(blk)[: len(take)]
                if t_end is None and len(times):
                    t_end = float(times[0]) + duration_s
                if t_end is not None:
                    keep = int(np.searchsorted(times, t_end, side="left"))
                    done = keep < len(take)
                    take = take[:keep]
            blocks.append(take)
            n += len(take)
            if progress is not None:
                progress(n)
            if done:
                break
    finally:
        source.close()
    if not blocks:
        return np.empty((0, source.columns), dtype=np.float32)
    return np.concatenate(blocks).astype(np.float32, copy=False)


def _sample_times(blk: Block) -> npt.NDArray[np.float64]:
    """Per-sample source times (seconds) of a block."""
    import numpy as np

    if blk.times is not None:
        return np.asarray(blk.times, dtype=np.float64)
    return blk.t0 + np.arange(len(blk.samples), dtype=np.float64) / blk.rate_hz


def as_fast_as_possible(sc: StreamConfig) -> StreamConfig:
    """A replay source reads at full speed for calibration (never waits for the file's
    timestamps); other sources are live and keep their settings."""
    opts = sc.source.options
    if sc.source.kind != "replay" or getattr(opts, "speed", 0.0) == 0.0:
        return sc
    log.info("stream %s: reading the recording as fast as it goes (speed 0)", sc.name)
    return replace(sc, source=replace(sc.source, options=replace(opts, speed=0.0)))


class Progress:
    """Progress lines on stderr, at most one per PROGRESS_EVERY_S (and the last one)."""

    def __init__(self, stream: str, want: int | None, duration_s: float | None) -> None:
        self.stream, self.want, self.duration_s = stream, want, duration_s
        self.t0 = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S and (self.want is None or n < self.want):
            return
        self.last = now
        if self.duration_s is not None:
            of = f"{n} samples, {now - self.t0:.0f} s (up to {self.duration_s:g} s of data)"
        else:
            of = f"{n}/{self.want} samples ({100 * n // max(self.want or 1, 1)} %)"
        print(f"calibrating {self.stream}: {of}", file=sys.stderr, flush=True)


def agent_running(state_dir: Path) -> bool:
    """Whether an agent is running on this state dir now (its status file says so)."""
    from edge_agent.commands.status import read_snapshot
    from edge_agent.service.status import Verdict, assess

    snap = read_snapshot(state_dir)
    return snap.exists and assess(snap, time.time()).verdict is not Verdict.DOWN


def _load(cfg: AgentConfig, sc: StreamConfig) -> LoadedModel:
    from edge_agent.profiles import load_profiles, select
    from edge_agent.runtime.model import load_model, resolve_model_dir

    profile = select(cfg.profile, load_profiles()).profile
    models_dir = Path(cfg.models_dir) if cfg.models_dir else None
    model_dir = resolve_model_dir(sc.model, sc.variant, profile, models_dir, Path(cfg.state_dir))
    return load_model(model_dir, profile)


def _calibrate(args: argparse.Namespace) -> int:
    from edge_agent.pipeline.calibration import (
        fit_calibration,
        load_calibration,
        save_calibration,
    )
    from edge_agent.sources.registry import create_source

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    cfg = load_config(args.config)
    if args.state_dir:
        cfg = replace(cfg, state_dir=args.state_dir)
    for opt in ("windows", "samples", "duration"):
        v = getattr(args, opt)
        if v is not None and not v > 0:
            raise ConfigError(f"--{opt}: expected a positive number")
    sc = as_fast_as_possible(_pick_stream(cfg, args.stream))
    state_dir = Path(cfg.state_dir)
    model = _load(cfg, sc)
    pre = model.card.preprocessing
    window, hop = sc.window or pre.window, sc.hop or pre.hop
    max_samples, duration = _budget(args, sc, window, hop)
    spec = sc.source.with_default_channels(pre.channels)  # channels left out: the card's
    source = create_source(spec.kind, sc.name, spec.options)
    try:
        samples = collect_samples(
            source,
            max_samples=max_samples,
            duration_s=duration,
            progress=Progress(sc.name, None if duration else max_samples, duration),
            wall_clock=sc.source.kind != "replay",  # a recording: its own time only
        )
    except SourceError as e:
        raise CalibrationError(f"stream {sc.name}: source failed while calibrating: {e}") from e
    log.info("stream %s: calibrating %s on %d samples", sc.name, model.description, len(samples))
    names = _user_names(source, model)
    try:
        cal = fit_calibration(
            model, samples, stream=sc.name, now=time.time(), window=window, hop=hop
        )
    except CalibrationError as e:
        raise CalibrationError(f"{e}{_name_map(names, model)}") from e
    try:
        old = load_calibration(state_dir, sc.name)
    except EdgeAgentError as e:
        log.warning("stream %s: replacing an unreadable calibration: %s", sc.name, e)
        old = None
    path = save_calibration(state_dir, cal)
    from edge_agent.ownership import adopt_new_entries

    adopt_new_entries(state_dir)  # run with sudo: the file stays the agent's to replace
    if old is not None:
        log.warning(
            "stream %s: re-calibrated: threshold %.6g -> %.6g (old one fitted %s for %s v%d)",
            sc.name,
            old.threshold,
            cal.threshold,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(old.created)),
            old.model_name,
            old.model_version,
        )
    else:
        log.info("stream %s: calibrated: threshold %.6g", sc.name, cal.threshold)
    _print(cal, old, path, model, as_json=args.json, names=names)
    _say_when_applied(state_dir, as_json=args.json)
    return 0


def _budget(
    args: argparse.Namespace, sc: StreamConfig, window: int, hop: int
) -> tuple[int, float | None]:
    """(samples to collect at most, seconds or None) from --duration/--samples/--windows."""
    from edge_agent.pipeline.calibration import MIN_WINDOWS, samples_needed

    if args.duration is not None:
        return MAX_SAMPLES, float(args.duration)
    if args.samples is not None:  # too few is refused by the fit, naming the minimum
        return int(args.samples), None
    n_win = args.windows or sc.calibrate_windows or DEFAULT_WINDOWS
    return samples_needed(window, hop, max(n_win, MIN_WINDOWS)), None


def _say_when_applied(state_dir: Path, *, as_json: bool) -> None:
    where = sys.stderr if as_json else sys.stdout
    if agent_running(state_dir):
        print(
            "the agent running on this state dir keeps its old calibration until it "
            "restarts: restart it to apply this one (systemctl restart edge-agent)",
            file=where,
        )
    else:
        print("no agent is running on this state dir: it applies at the next start", file=where)


def _user_names(source: Source, model: LoadedModel) -> tuple[str, ...]:
    """The source's channel names when it has one per model channel, else the card's."""
    card = model.card.preprocessing.channels
    try:
        names = tuple(source.channels)
    except Exception:  # noqa: BLE001 - a source without names: the card's
        return card
    return names if len(names) == len(card) and all(names) else card


def _name_map(names: tuple[str, ...], model: LoadedModel) -> str:
    card = model.card.preprocessing.channels
    pairs = [f"{c} = your {u!r}" for c, u in zip(card, names, strict=True) if c != u]
    return f" (model channel names; {', '.join(pairs)})" if pairs else ""


def _print(
    cal: Calibration,
    old: Calibration | None,
    path: Path,
    model: LoadedModel,
    *,
    as_json: bool,
    names: tuple[str, ...],
) -> None:
    from edge_agent.pipeline.calibration import threshold_warning

    if as_json:
        d = cal.to_json()
        d["path"] = str(path)
        d["previous_threshold"] = old.threshold if old else None
        d["card_threshold"] = model.card.threshold
        d["warning"] = threshold_warning(cal, model.card)
        d["source_channels"] = list(names)
        json.dump(d, sys.stdout, indent=2)
        print()
        return
    print(f"stream {cal.stream}: calibrated {model.description}")
    print(f"  samples {cal.n_samples}, windows {cal.n_windows}")
    prev = f" (was {old.threshold:.6g})" if old else ""
    print(f"  threshold {cal.threshold:.6g}{prev}; card {model.card.threshold:.6g}")
    warning = threshold_warning(cal, model.card)
    if warning:
        print(f"  WARNING: {warning}")
    for ch, user, m, s in zip(cal.channels, names, cal.mean, cal.std, strict=True):
        label = user if user == ch else f"{user} (model channel {ch})"
        print(f"  {label}: mean {m:.6g}, std {s:.6g}")
    print(f"  stored in {path} (valid for model sha256 {cal.model_sha256[:12]}... only)")
