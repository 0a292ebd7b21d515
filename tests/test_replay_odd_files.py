"""Replay files a recorder or a person can produce by mistake: each is either read with
the damage counted, or refused with a message that says what is wrong (never a crash,
never silently wrong times)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import SourceError
from edge_agent.sources.replay import Options, ReplaySource


def _rows(n: int, t0: float = 1_700_000_000.0) -> list[str]:
    return [f"{t0 + i / 100:.2f},{i},{-i}" for i in range(n)]


def test_a_field_over_the_csv_limit_is_a_skipped_row_not_a_crash(tmp_path: Path) -> None:
    rows = _rows(200)
    rows[100] = rows[100].split(",")[0] + "," + "7" * 300_000 + ",1"  # a run-away field
    path = tmp_path / "huge.csv"
    path.write_text("\n".join(["ts,a,b", *rows]) + "\n")
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0))
    src.open()
    got = []
    while (b := src.read(0.5)) is not None:
        got.append(b)
    samples = np.concatenate([b.samples for b in got])
    assert len(samples) == 199
    assert src.snapshot_counters()["bad_rows"] == 1
    # the skipped row is a hole: the block after it starts afresh
    assert any(b.gap_before for b in got)


def test_a_header_over_the_csv_limit_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "hdr.csv"
    path.write_text("ts," + "x" * 300_000 + "\n" + "\n".join(_rows(10)) + "\n")
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0))
    with pytest.raises(SourceError, match="header"):
        src.open()


def test_epoch_seconds_and_milliseconds_mixed_in_one_column_are_refused(
    tmp_path: Path,
) -> None:
    secs = _rows(150)  # most of the column: seconds
    millis = [f"{int(1_700_000_001_500 + i * 10)},{i},{-i}" for i in range(50)]
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(["ts,a,b", *secs, *millis]) + "\n")
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0))
    with pytest.raises(
        SourceError, match=r"mixes units: 1700000001500 \(data row 151\).*\(s\).*timestamp_unit"
    ):
        src.open()
    # a unit set on purpose is taken as given
    forced = ReplaySource(
        "r", Options(path=str(path), timestamp_column="ts", speed=0, timestamp_unit="ms")
    )
    forced.open()


def _validate(tmp_path: Path, rows: list[str], **source: object) -> dict[str, str]:
    from edge_agent.config import parse_config
    from edge_agent.preflight import check_runnable
    from edge_agent.profiles import load_profiles, select

    path = tmp_path / "rec.csv"
    path.write_text("\n".join(["ts,vib_x,vib_y,vib_z,current", *rows]) + "\n")
    src = {"kind": "replay", "path": str(path), "timestamp_column": "ts", **source}
    cfg = parse_config(
        {
            "device_id": "gw-01",
            "mqtt": {"enabled": False},
            "streams": [{"name": "press", "model": "vibration-ae", "source": src}],
        },
        source="t",
    )
    profile = select("x86-generic", load_profiles()).profile
    return {f.key: f.message for f in check_runnable(cfg, profile) if f.fatal}


def _vib_rows(n: int, t0: float = 1_700_000_000.0) -> list[str]:
    return [f"{t0 + i / 100:.2f},0.1,0.2,0.3,4.0" for i in range(n)]


@pytest.mark.parametrize("loop", [False, True])
def test_a_recording_shorter_than_the_models_window_is_refused(tmp_path: Path, loop: bool) -> None:
    # 1 row (or 63): the agent would run and never score a window, even looping (each
    # pass starts after a hole)
    for n in (1, 63):
        errors = _validate(tmp_path, _vib_rows(n), loop=loop)
        assert list(errors) == ["streams[0].source.path"], errors
        assert f"{n} rows" in errors["streams[0].source.path"]
        assert "window of 64" in errors["streams[0].source.path"]
    assert _validate(tmp_path, _vib_rows(64), loop=loop) == {}


def test_a_recording_whose_holes_leave_no_whole_window_is_refused(tmp_path: Path) -> None:
    # 200 rows, but a 1-minute jump every 50 rows: no stretch holds 64 samples
    rows = [r for k in range(4) for r in _vib_rows(50, 1_700_000_000.0 + 60 * k)]
    errors = _validate(tmp_path, rows)
    assert "longest stretch without a hole is 50 rows" in errors["streams[0].source.path"]


def test_decimal_comma_applies_to_the_timestamp_column_too(tmp_path: Path) -> None:
    # a European export: ';' between fields, ',' in every number, epoch seconds included
    path = tmp_path / "eu.csv"
    path.write_text(
        "ts;a\n"
        + "".join(f"{1_700_000_000 + i / 100:.2f};{i},5\n".replace(".", ",") for i in range(50))
    )
    src = ReplaySource(
        "r", Options(path=str(path), timestamp_column="ts", delimiter=";", decimal=",", speed=0)
    )
    src.open()
    b = src.read(0.5)
    assert b is not None
    assert b.times is not None
    assert b.times[1] == pytest.approx(1_700_000_000.01)
    assert b.samples[1, 0] == 1.5
    assert src.rate_hz == pytest.approx(100.0)


def test_a_channel_named_twice_or_the_timestamp_as_a_channel_is_refused() -> None:
    # a copy-paste slip fed vib_x twice and vib_z never; the epoch time as a channel
    # put 1.7e9 into the model: both ran without a word
    with pytest.raises(ValueError, match="'vib_x' twice"):
        Options(path="x.csv", columns=("vib_x", "vib_x", "vib_y", "current"))
    with pytest.raises(ValueError, match="'ts' is the timestamp_column"):
        Options(path="x.csv", timestamp_column="ts", columns=("ts", "vib_x"))
