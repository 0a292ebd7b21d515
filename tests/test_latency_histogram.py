"""The inference latency histogram the backends record into (pure)."""

from __future__ import annotations

import pytest

from edge_agent.runtime.latency import LatencyHistogram


def test_each_call_lands_in_the_first_bucket_that_holds_it() -> None:
    h = LatencyHistogram((0.001, 0.01, 0.1))
    for s in (0.0005, 0.001, 0.002, 0.05, 3.0):
        h.observe(s)
    snap = h.snapshot()
    assert snap.counts == (2, 1, 1, 1)  # <= 1 ms twice (le is inclusive), then one each
    assert snap.count == 5
    assert snap.sum_s == pytest.approx(3.0535)
    assert snap.to_json() == {"buckets_s": [0.001, 0.01, 0.1], "counts": [2, 1, 1, 1],
                              "sum_s": snap.sum_s}  # fmt: skip
    h.reset()
    assert h.snapshot().count == 0


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        LatencyHistogram((0.1, 0.01))
