"""A stream's on-site calibration across a model update.

The candidate is shadowed, promoted and tried on each stream *as that stream would run
it*: with the stream's calibration carried over when the new model reads the same
channels with the same window (`edge_agent.pipeline.calibration.carry_over`), else on
the card's normalisation, with a note for status saying to re-calibrate. Each stream's
status (`CalibrationHolder`: the stream runtime) is kept to what is applied, never a
calibration that no longer is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.config import StreamConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.calibration import (
    Calibration,
    apply_calibration,
    carried,
    carried_note,
    carry_over,
    load_for_model,
    not_applied_note,
    save_calibration,
)
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.runtime.card import ModelCard
from edge_agent.runtime.model import LoadedModel
from edge_agent.streams import build_policy

__all__ = ["CalibrationHolder", "StreamRun", "for_stream", "keep", "refresh"]

log = logging.getLogger(__name__)


class CalibrationHolder(Protocol):
    """What status shows of a stream's calibration (the stream runtime)."""

    calibration: Calibration | None
    calibration_note: str


@dataclass(frozen=True)
class StreamRun:
    """The candidate as one stream runs it: normalisation, alarm policy, calibration."""

    model: LoadedModel
    policy: AlarmPolicy
    calibration: Calibration | None
    note: str  # for status: carried over, or why not; "" if the stream has none


def for_stream(
    state_dir: Path, pipeline: StreamPipeline, config: StreamConfig, cand: LoadedModel
) -> StreamRun:
    """How `cand` runs on the stream of `pipeline`: with the calibration the stream
    applies now carried over when it fits, else on the card's values (and a note)."""
    cal = load_for_model(state_dir, config.name, pipeline.model.card)
    if cal is None:
        return StreamRun(cand, build_policy(config, cand), None, "")
    why = carry_over(cal, cand.card, pipeline.window)
    if why:
        note = (
            f"calibration fitted on {cal.model_name} v{cal.model_version} does not carry over "
            f"to {cand.card.name} v{cand.card.version} ({why}): this stream runs on the "
            "card's normalisation and threshold; re-calibrate it (edge-agent calibrate)"
        )
        return StreamRun(cand, build_policy(config, cand), None, note)
    c = carried(cal, cand.card)
    model = apply_calibration(cand, c)
    return StreamRun(model, build_policy(config, model, c), c, carried_note(c, cand.card))


def keep(state_dir: Path, run: StreamRun) -> None:
    """Store a carried calibration (so a restart applies it to the new model too); a
    failure is logged: the calibration still applies until the agent restarts."""
    if run.calibration is None:
        return
    try:
        save_calibration(state_dir, run.calibration)
    except EdgeAgentError as e:
        log.warning("stream %s: carried calibration not stored: %s", run.calibration.stream, e)


def refresh(holder: CalibrationHolder, state_dir: Path, stream: str, card: ModelCard) -> None:
    """Status after the stream's model changed outside an update (a manual rollback)."""
    cal = load_for_model(state_dir, stream, card)
    holder.calibration = cal
    holder.calibration_note = (
        carried_note(cal, card) if cal is not None else not_applied_note(state_dir, stream, card)
    )
