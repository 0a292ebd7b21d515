"""Review of b47ff42 (streams that replay one file share one read-only copy).

1. A CSV with rows out of time order (or repeated times), which the docs say is put in
   order, is not shared: each stream replays its own re-ordered copy, and the shared
   unordered copy stays alive beside them (`ReplaySource._recording`): N streams hold
   N + 1 copies, one more than before the change.
2. A file rewritten in place with the same size and the old modification time (`cp -p`,
   `rsync --inplace -t`, `touch -r`, or two writes within one timestamp tick) is not
   read again: a stream opened afterwards replays the old content while the docs say
   "a file changed ... on disk is read again by streams that open it afterwards".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_agent.sources.replay import Options, ReplaySource


def _csv(path: Path, swap: bool) -> Path:
    rows = [f"{1_700_000_000 + i / 100:.2f},{i},{-i}" for i in range(400)]
    if swap:
        rows[10], rows[11] = rows[11], rows[10]  # one row out of time order
    path.write_text("\n".join(["ts,a,b", *rows]) + "\n")
    return path


def _open(path: Path) -> ReplaySource:
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0, block=64))
    src.open()
    return src


def test_streams_of_a_csv_with_rows_out_of_time_order_share_one_copy(tmp_path: Path) -> None:
    path = _csv(tmp_path / "rec.csv", swap=True)
    a, b = _open(path), _open(path)
    assert a.counters.get("out_of_order_times") == 1
    # what each stream replays is one copy, not one per stream plus the shared original
    assert np.shares_memory(a._data, b._data)


def test_a_file_rewritten_in_place_with_its_old_mtime_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "rec.npy"
    np.save(path, np.zeros((300, 3), np.float32))
    st = path.stat()
    old = _open_npy(path)  # a stream replaying the first take keeps the copy alive
    assert float(old._data[0, 0]) == 0.0
    np.save(path, np.ones((300, 3), np.float32))  # same shape: same size, same inode
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p / rsync -t leave it
    new = _open_npy(path)
    np.testing.assert_array_equal(new._data, np.load(path))


def _open_npy(path: Path) -> ReplaySource:
    src = ReplaySource("r", Options(path=str(path), rate_hz=100.0, speed=0, block=64))
    src.open()
    return src


def test_columns_given_as_a_list_still_replay(tmp_path: Path) -> None:
    """Options.columns is typed as a tuple, but a Python caller (a script, a notebook)
    passing a list worked before b47ff42; now the cache key is unhashable: TypeError."""
    path = _csv(tmp_path / "rec.csv", swap=False)
    opts = Options(path=str(path), columns=["a"], timestamp_column="ts", speed=0)  # type: ignore[arg-type]
    src = ReplaySource("r", opts)
    src.open()
    assert src.channels == ("a",)
