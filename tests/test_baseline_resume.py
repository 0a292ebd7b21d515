"""A stored adaptive baseline that is damaged (non-finite or non-positive values) is
not resumed: the stream starts afresh instead of failing on every restart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.modelbuild.build import BuildSpec, build
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.baseline_config import BaselineConfig
from edge_agent.pipeline.baseline_follower import BaselineFollower, baseline_path
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.runtime.model import load_model
from edge_agent.sources.base import Block


def _signal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 50 + np.sin(np.arange(n) / 10) + 0.3 * rng.standard_normal(n)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume-model")
    csv = d / "normal.csv"
    x = _signal(1500, 1)
    csv.write_text("t,temp\n" + "\n".join(f"{i},{v:.4f}" for i, v in enumerate(x)) + "\n")
    build(BuildSpec(data=(csv,), columns=("temp",), out=d / "m", timestamp_column="t"))
    return d / "m" / "m-int8-onnx"


@pytest.mark.parametrize(
    ("mean", "std"),
    [([float("inf")], [1.0]), ([50.0], [float("nan")]), ([50.0], [-1.0]), ([50.0], [0.0])],
)
def test_a_damaged_stored_baseline_starts_afresh(tmp_path, model_dir, mean, std):
    m = load_model(model_dir)
    anchor_mean, anchor_std = m.norm_stats
    path = baseline_path(tmp_path, "s")
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "v": 1,
                "stream": "s",
                "model_sha256": m.card.sha256,
                "anchor_mean": [float(v) for v in anchor_mean],
                "anchor_std": [float(v) for v in anchor_std],
                "mean": mean,
                "std": std,
                "relearns": 0,
            }
        )
    )
    a = m.card.alarm
    policy = AlarmPolicy(m.card.threshold, min_on=a.min_on, min_off=a.min_off)
    p = StreamPipeline("s", m, policy, window=10, hop=1, max_batch=64)
    follower = BaselineFollower(tmp_path, "s", BaselineConfig("adaptive"), p)
    y = _signal(640, 2)  # normal data of the same machine
    events = []
    for s in range(0, len(y), 64):
        blk = Block(y[s : s + 64, None].astype(np.float32), float(s), s, 1.0)
        events += list(p.process(blk))
        follower.after_block(blk)  # raised ModelError on inf: the stream restarted forever
    assert follower.tracker is not None
    assert np.allclose(follower.tracker.mean, anchor_mean, atol=0.5 * anchor_std)
    assert events == []  # as if nothing was stored: no false alarm from a bad std
