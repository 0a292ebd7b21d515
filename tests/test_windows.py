import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.pipeline.windows import Windower


def _all_windows(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    return np.stack([x[s : s + window] for s in range(0, len(x) - window + 1, hop)])


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 40),
    hop=st.integers(1, 40),
    splits=st.lists(st.integers(1, 97), min_size=1, max_size=12),
)
def test_windows_do_not_depend_on_block_boundaries(window, hop, splits):
    n = sum(splits)
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    w = Windower(window, hop, 3)
    got, starts, pos = [], [], 0
    for k in splits:
        out = w.push(x[pos : pos + k], pos)
        got.append(out.data)
        starts.append(out.starts)
        pos += k
    data = np.concatenate(got)
    if n < window:
        assert len(data) == 0
        return
    expected = _all_windows(x, window, hop)
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(np.concatenate(starts), np.arange(len(expected)) * hop)


def test_window_holding_nan_is_withheld_and_counted():
    w = Windower(4, 2, 1)
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    x[5] = np.nan
    out = w.push(x, 0)
    # windows start at 0,2,4,6; those covering index 5 (starts 2 and 4) are withheld
    assert out.skipped == 2
    assert out.starts.tolist() == [0, 6]
    assert np.isfinite(out.data).all()


def test_gap_in_sequence_restarts_windowing_and_is_counted():
    w = Windower(4, 4, 1)
    a = w.push(np.zeros((6, 1), np.float32), 0)
    b = w.push(np.ones((6, 1), np.float32), 10)  # samples 6..9 lost
    assert a.starts.tolist() == [0]
    assert b.starts.tolist() == [10]  # no window spans the gap
    assert w.gaps == 1
    assert w.lost_samples == 4


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expected"):
        Windower(4, 2, 3).push(np.zeros((5, 2), np.float32), 0)
