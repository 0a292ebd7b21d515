"""A turn's samples larger than a stream's own window buffer are windowed in a buffer of
the thread's (pipeline/windows.py): the windows, their starts, the withheld windows and
what the stream keeps for its next windows are exactly those of small pushes, for
streams taking turns on one thread and on several."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.pipeline import windows as windows_mod
from edge_agent.pipeline.windows import Windower


def _signal(n: int, channels: int, seed: int, bad_every: int = 0) -> npt.NDArray[np.float32]:
    x = np.random.default_rng(seed).standard_normal((n, channels)).astype(np.float32)
    if bad_every:
        x[::bad_every, seed % channels] = np.nan
    return x


Blocks = list[tuple[int, npt.NDArray[np.float32]]]


def _blocks(
    x: npt.NDArray[np.float32], splits: list[int], holes: frozenset[int] = frozenset()
) -> Blocks:
    """`x` as (seq, samples) blocks of `splits` (cycled); a block whose index is in
    `holes` follows a hole of 5 lost samples."""
    out, pos, seq, i = [], 0, 0, 0
    while pos < len(x):
        k = splits[i % len(splits)]
        seq += 5 if i in holes else 0
        b = x[pos : pos + k]
        out.append((seq, b))
        pos, seq, i = pos + k, seq + len(b), i + 1
    return out


def _small(blocks: Blocks, k: int = 61) -> Blocks:
    """The same samples and holes in blocks of at most `k` (within a stream's own buffer)."""
    return [(seq + i, b[i : i + k]) for seq, b in blocks for i in range(0, len(b), k)]


def _windows(
    w: Windower, blocks: Blocks
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], int]:
    """(windows, starts, withheld) of `blocks` pushed in order."""
    data, starts, skipped = [], [], 0
    for seq, b in blocks:
        out = w.push(b, seq)
        data.append(out.data)
        starts.append(out.starts)
        skipped += out.skipped
    return np.concatenate(data), np.concatenate(starts), skipped


def _same(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


@settings(max_examples=40, deadline=None)
@given(
    window=st.integers(1, 80),
    hop=st.integers(1, 100),
    big=st.lists(st.integers(1, 9_000), min_size=1, max_size=6),
    bad_every=st.sampled_from([0, 997, 4_001]),
    holes=st.frozensets(st.integers(0, 12), max_size=3),
)
def test_large_pushes_give_the_windows_of_small_ones(
    window: int, hop: int, big: list[int], bad_every: int, holes: frozenset[int]
) -> None:
    x = _signal(30_000, 3, seed=window, bad_every=bad_every)
    blocks = _blocks(x, big, holes)
    large = Windower(window, hop, 3)
    _same(_windows(large, blocks), _windows(Windower(window, hop, 3), _small(blocks)))
    # what the stream kept between turns stays in its own small buffer
    assert large._cap == max(4 * window, 1024)


def test_streams_taking_turns_on_one_thread_keep_their_own_windows() -> None:
    """Four streams (other shapes) interleaved on one thread share its scratch buffer;
    each gets the windows it gets alone."""
    shapes = [(64, 16, 4), (64, 16, 4), (32, 8, 2), (128, 64, 1)]
    xs = [
        _signal(60_000, c, seed=i, bad_every=5_003 if i == 1 else 0)
        for i, (_, _, c) in enumerate(shapes)
    ]
    alone = [
        _windows(Windower(*s), _small(_blocks(x, [60_000])))
        for s, x in zip(shapes, xs, strict=True)
    ]
    ws = [Windower(*s) for s in shapes]
    got: list[list[tuple]] = [[] for _ in shapes]  # type: ignore[type-arg]
    for pos in range(0, 60_000, 16_384):
        for i, w in enumerate(ws):
            out = w.push(xs[i][pos : pos + 16_384], pos)
            got[i].append((out.data.copy(), out.starts, out.skipped))
    for i in range(len(shapes)):
        joined = (
            np.concatenate([g[0] for g in got[i]]),
            np.concatenate([g[1] for g in got[i]]),
            sum(g[2] for g in got[i]),
        )
        _same(joined, alone[i])


def test_streams_on_two_threads_at_once_keep_their_own_windows() -> None:
    """Two threads windowing at the same time each use a scratch buffer of their own."""
    xs = [_signal(200_000, 4, seed=s) for s in (1, 2)]
    alone = [_windows(Windower(64, 16, 4), _small(_blocks(x, [len(x)]))) for x in xs]
    results: dict[int, tuple] = {}  # type: ignore[type-arg]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        results[i] = _windows(Windower(64, 16, 4), _blocks(xs[i], [16_384, 9_999]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(2):
        _same(results[i], alone[i])


def test_a_push_beyond_the_scratch_limit_grows_the_streams_own_buffer() -> None:
    rows = windows_mod.SCRATCH_MAX_BYTES // (4 * 4) + 10
    x = _signal(rows + 100, 4, seed=3)
    w = Windower(64, 16, 4)
    blocks = _blocks(x, [rows])
    _same(_windows(w, blocks), _windows(Windower(64, 16, 4), _small(blocks)))
    assert w._cap > rows
