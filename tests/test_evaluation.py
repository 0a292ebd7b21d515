"""The SKAB metric and the causal pointwise prediction, on hand-computed cases."""

import math

import numpy as np
import pytest

from edge_agent.measure.evaluation import Counts, confusion, pointwise_alarm


def test_confusion_counts_by_hand():
    pred = np.array([1, 1, 0, 0, 1, 0], bool)
    truth = np.array([1, 0, 1, 0, 1, 0], bool)
    assert confusion(pred, truth) == Counts(tp=2, fp=1, fn=1, tn=2)


def test_metrics_by_hand():
    c = Counts(tp=6, fp=2, fn=4, tn=8)
    # F1 = 6 / (6 + (2 + 4) / 2) = 6 / 9
    assert c.f1 == pytest.approx(2 / 3)
    assert c.far == pytest.approx(20.0)  # 100 * 2 / 10
    assert c.mar == pytest.approx(40.0)  # 100 * 4 / 10


def test_counts_pool_before_ratios():
    a, b = Counts(tp=1, fp=0, fn=0, tn=9), Counts(tp=0, fp=1, fn=9, tn=0)
    pooled = a + b
    assert pooled == Counts(1, 1, 9, 9)
    assert pooled.f1 == pytest.approx(1 / 6)  # not the mean of per-file F1s (1.0, 0.0)
    assert pooled.far == pytest.approx(10.0)


def test_undefined_ratios_are_nan_not_zero():
    c = Counts(tp=0, fp=0, fn=0, tn=5)
    assert math.isnan(c.f1)
    assert math.isnan(c.mar)
    assert c.far == 0.0


def test_confusion_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros(3, bool), np.zeros(4, bool))


def test_pointwise_alarm_holds_state_between_transitions():
    # alarm opens after the window ending at row 3, closes after the one ending at row 6
    p = pointwise_alarm(10, [(3, True), (6, False), (8, True)])
    assert p.astype(int).tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_pointwise_alarm_no_transitions_and_order():
    assert not pointwise_alarm(4, []).any()
    with pytest.raises(ValueError, match="order"):
        pointwise_alarm(5, [(3, True), (2, False)])
