"""Resampling OPC UA notifications onto a grid in source time (pure, times passed in)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.sources.opcua_grid import AsOfGrid

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_rows_hold_the_newest_value_at_or_before_each_grid_time() -> None:
    g = AsOfGrid(2, 0.1)
    # channel 0 changes at 100.00 and 100.25; channel 1 once, at 100.05
    g.add(0, 1.0, 100.00, arrived=100.00)
    g.add(1, 7.0, 100.05, arrived=100.05)
    # the grid starts at the first slot holding both first values (100.1)
    assert g.emit(now=100.0, lag=0.0) is None
    g.add(0, 2.0, 100.25, arrived=100.26)
    got = g.emit(now=100.45, lag=0.0)
    assert got is not None
    assert got.t0 == pytest.approx(100.1)
    np.testing.assert_array_equal(got.rows, [[1.0, 7.0], [1.0, 7.0], [2.0, 7.0], [2.0, 7.0]])
    assert not got.gap_before


def test_a_steady_signal_still_yields_samples() -> None:
    g = AsOfGrid(1, 0.5)
    g.add(0, 3.0, 10.0, arrived=10.0)
    assert g.emit(10.0, 0.0) is not None
    later = g.emit(12.0, 0.0)  # no notification for 2 s: the value did not change
    assert later is not None
    assert len(later.rows) == 4
    assert (later.rows == 3.0).all()


def test_rows_wait_for_notifications_still_in_flight() -> None:
    g = AsOfGrid(1, 0.25)
    g.add(0, 1.0, 50.0, arrived=50.0)
    first = g.emit(50.5, lag=0.5)  # rows run half a second behind the clock
    assert first is not None
    assert first.t0 == 50.0
    np.testing.assert_array_equal(first.rows[:, 0], [1.0])
    assert g.emit(50.7, lag=0.5) is None  # 50.25 is not due before 50.75
    # stamped 50.3 by the device, delivered at 50.75 (a publishing interval later)
    g.add(0, 5.0, 50.3, arrived=50.75)
    got = g.emit(51.0, lag=0.5)
    assert got is not None
    assert got.t0 == 50.25
    # rows at 50.25 and 50.5: the late value lands in its own time, not lost
    np.testing.assert_array_equal(got.rows[:, 0], [1.0, 5.0])


def test_grid_follows_the_server_clock_not_the_agents() -> None:
    g = AsOfGrid(1, 1.0)
    # the server's clock is 3600 s ahead of the agent's; notifications say so
    g.add(0, 1.0, 3600.0 + 1000.0, arrived=1000.0)
    got = g.emit(now=1000.0, lag=0.0)
    assert got is not None
    assert g.offset == pytest.approx(3600.0)
    assert got.t0 == pytest.approx(4600.0)


def test_a_time_jump_is_bounded_and_reported_as_a_gap() -> None:
    g = AsOfGrid(1, 0.01, max_rows=50)
    g.add(0, 1.0, 0.0, arrived=0.0)
    g.emit(0.0, 0.0)
    got = g.emit(60.0, 0.0)  # a minute of 100 Hz rows is due at once
    assert got is not None
    assert len(got.rows) == 50
    assert got.gap_before
    assert got.t0 + 49 * 0.01 == pytest.approx(60.0)


def test_nan_marks_a_value_gone_bad_and_channels_never_heard_of() -> None:
    g = AsOfGrid(2, 1.0)
    g.add(0, 4.0, 0.0, arrived=0.0)
    g.emit(0.0, 0.0)
    g.add(0, math.nan, 0.5, arrived=0.5)
    got = g.emit(1.0, 0.0)
    assert got is not None
    assert np.isnan(got.rows).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        AsOfGrid(0, 1.0)


def test_grid_starts_at_the_first_values_not_before_them() -> None:
    g = AsOfGrid(2, 0.25)
    # initial values stamped just after "now - lag": rows before them would be NaN
    g.add(0, 1.0, 100.0, arrived=100.05)
    g.add(1, 2.0, 100.1, arrived=100.05)
    assert g.emit(100.1, lag=0.5) is None  # waits for the grid time of the newest value
    got = g.emit(100.9, lag=0.5)
    assert got is not None
    assert got.t0 == 100.25
    assert not np.isnan(got.rows).any()


def test_the_documented_opcua_example_is_a_valid_config() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "sources.md").read_text()
    example = doc.split("## opcua", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(tomllib.loads(example), source="sources.md")
    opts = cfg.streams[0].source.options
    assert [c.name for c in opts.channels] == ["vib_x", "vib_y", "vib_z", "current"]
    assert opts.security_policy == "Basic256Sha256"
    assert opts.channels[3].browse_path == "2:Press/2:Drive/2:Current"
