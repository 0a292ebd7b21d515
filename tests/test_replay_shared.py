"""Streams that replay one file share one read-only copy of it (issue 15: 64 replay
streams held 64 copies), yet each replays exactly what it would alone; a file changed
on disk is read again, and the copy goes with the last stream that replays it."""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path

import numpy as np
import pytest

from edge_agent.sources.base import Block
from edge_agent.sources.replay import Options, ReplaySource, load_recording


def _npy(path: Path, seed: int, n: int = 500) -> Path:
    rng = np.random.default_rng(seed)
    np.save(path, rng.standard_normal((n, 3)).astype(np.float32))
    return path


def _blocks(src: ReplaySource) -> list[Block]:
    src.open()
    out = []
    while (b := src.read(0.5)) is not None:
        out.append(b)
    return out


def _source(path: Path, **kw: object) -> ReplaySource:
    return ReplaySource("r", Options(path=str(path), speed=0, block=64, rate_hz=100.0, **kw))  # type: ignore[arg-type]


def test_two_streams_of_one_npy_file_share_one_read_only_copy(tmp_path: Path) -> None:
    path = _npy(tmp_path / "rec.npy", 1)
    a, b = _source(path), _source(path)
    got_a, got_b = _blocks(a), _blocks(b)
    sa, sb = got_a[0].samples, got_b[0].samples
    assert np.shares_memory(sa, sb)  # one copy
    assert not sa.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        sa[0, 0] = 1.0  # nobody can change what another stream replays
    want = load_recording(path, Options(path=str(path))).samples
    np.testing.assert_array_equal(np.concatenate([x.samples for x in got_a]), want)
    np.testing.assert_array_equal(np.concatenate([x.samples for x in got_b]), want)


def test_csv_streams_share_too_but_not_across_different_options(tmp_path: Path) -> None:
    path = tmp_path / "rec.csv"
    rows = [f"{1_700_000_000 + i / 100:.2f},{i},{-i}" for i in range(300)]
    path.write_text("\n".join(["ts,a,b", *rows]) + "\n")
    both = [_source(path, timestamp_column="ts") for _ in range(2)]
    only_a = _source(path, timestamp_column="ts", columns=("a",))
    blocks = [_blocks(s) for s in (*both, only_a)]
    assert np.shares_memory(blocks[0][0].samples, blocks[1][0].samples)
    assert not np.shares_memory(blocks[0][0].samples, blocks[2][0].samples)
    assert blocks[2][0].samples.shape[1] == 1
    np.testing.assert_array_equal(blocks[2][0].samples[:, 0], blocks[0][0].samples[:, 0])


def test_a_file_rewritten_on_disk_is_read_again_and_the_old_stream_goes_on(
    tmp_path: Path,
) -> None:
    path = _npy(tmp_path / "rec.npy", 1)
    old = _source(path)
    first = _blocks(old)
    before = np.concatenate([x.samples for x in first])
    _npy(tmp_path / "new.npy", 2)
    os.replace(tmp_path / "new.npy", path)  # a recorder's new take, renamed over it
    new = _blocks(_source(path))
    after = np.concatenate([x.samples for x in new])
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, np.load(path))
    # the stream that opened the first take still holds and replays it, unchanged
    np.testing.assert_array_equal(np.concatenate([x.samples for x in first]), before)


def test_the_copy_is_freed_with_the_last_stream_that_replays_it(tmp_path: Path) -> None:
    path = _npy(tmp_path / "rec.npy", 1)
    a, b = _source(path), _source(path)
    a.open()
    b.open()
    ref = weakref.ref(a._data)
    del a
    gc.collect()
    assert ref() is not None  # b still replays it
    del b
    gc.collect()
    assert ref() is None
