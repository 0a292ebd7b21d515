import numpy as np
import pytest

from edge_agent.pipeline.alarms import AlarmPolicy, Transition


def run(policy, scores):
    return policy.update(np.asarray(scores, dtype=np.float64))


def test_opens_after_min_on_and_closes_after_min_off_below_hysteresis():
    p = AlarmPolicy(1.0, min_on=2, min_off=2, hysteresis=0.5)
    ch = run(p, [0.1, 1.2, 0.2, 1.5, 1.1, 0.9, 0.7, 0.4, 0.6, 0.3, 0.2])
    assert [(c.transition, c.index) for c in ch] == [
        (Transition.START, 4),
        (Transition.END, 10),
    ]
    assert ch[1].peak == 1.5


def test_hovering_in_the_hysteresis_band_does_not_flap():
    p = AlarmPolicy(1.0, min_on=1, min_off=1, hysteresis=0.8)
    ch = run(p, [1.1, 0.9, 0.85, 0.95, 0.82])
    assert [c.transition for c in ch] == [Transition.START]
    assert p.state.active


def test_state_carries_across_batches():
    p = AlarmPolicy(1.0, min_on=3, min_off=1)
    assert run(p, [2.0, 2.0]) == []
    (c,) = run(p, [2.0])
    assert c.transition is Transition.START
    assert c.index == 0


@pytest.mark.parametrize(
    "kw", [{"threshold": 0}, {"threshold": 1, "min_on": 0}, {"threshold": 1, "hysteresis": 1.5}]
)
def test_rejects_nonsense(kw):
    thr = kw.pop("threshold")
    with pytest.raises(ValueError, match="threshold > 0"):
        AlarmPolicy(thr, **kw)
