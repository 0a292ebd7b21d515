"""Replay recorded data (CSV or .npy) in real time, faster, or as fast as scoring goes.

CSV: a header row names the columns; `columns` selects and orders channels;
`timestamp_column` gives sample times (epoch seconds, milliseconds, microseconds or
nanoseconds, told apart by size unless `timestamp_unit` says; or ISO 8601, with or
without an offset: a time without one is the gateway's local time), else `rate_hz`
does, counted from when the replay opened. With timestamps and no `rate_hz`, the
nominal rate is the median step between them.

Rows that do not parse (wrong field count, text in a number column) are skipped and
counted as `bad_rows`; empty or "nan" fields become NaN, which the pipeline treats
as a bad sample (the window is not scored, and it is counted). Rows out of time order
are put in order (each place where time goes back counts in `out_of_order_times`); of
rows with one time the first is kept, the others counted (`duplicate_times`).
A skipped row, a step in time of more than 1.5 nominal periods (`time_gaps`) and the
wrap of `loop = true` are holes: the block after one is marked `gap_before`.

Every block carries its samples' times (a timestamp column's per row; without one, the
first row's time and the rate). Each `loop` pass continues the clock where
the previous one ended (times shifted by the file's span), so pacing and times stay
real time on every pass.

Streams that replay one file (the same file, unchanged, read with the same options)
share one read-only copy of it (`shared_recording`): 64 streams of a 3 MB recording held
64 copies (~200 MB of RSS at 64 streams, docs/benchmarks/agent.md) and parsed a CSV 64
times. Blocks are read-only views of it, as they always were views.
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_agent.errors import SourceError
from edge_agent.schema import check
from edge_agent.sources.base import Block, Source
from edge_agent.sources.framing import looks_like_decimal_commas
from edge_agent.sources.pacing import Pacer

__all__ = [
    "Options",
    "Recording",
    "ReplaySource",
    "load_recording",
    "load_table",
    "shared_recording",
]

log = logging.getLogger(__name__)

DEFAULT_RATE_HZ = 1.0  # no timestamps and no rate_hz
GAP_PERIODS = 1.5  # a step in time longer than this many nominal periods is a hole
# epoch magnitudes (now ~1.7e9 s): above these a number is ms, us or ns
_UNIT_LIMITS = ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3))
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class Options:
    path: str = field(metadata=check("nonempty"))
    columns: tuple[str, ...] = ()
    timestamp_column: str = ""
    delimiter: str = ","
    decimal: Literal[".", ","] = "."  # "," reads "3,14" (needs another delimiter)
    timestamp_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    # 0: from the timestamp column's median step, or 1 Hz without one
    rate_hz: float = field(default=0.0, metadata=check("nonneg"))
    speed: float = field(default=1.0, metadata=check("nonneg"))
    block: int = field(default=64, metadata=check("positive"))
    loop: bool = False

    def __post_init__(self) -> None:
        if self.decimal == "," and self.delimiter == ",":
            raise ValueError('decimal = "," needs another delimiter, e.g. delimiter = ";"')
        twice = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if twice:
            raise ValueError(f"columns: names {twice[0]!r} twice; each channel once")
        if self.timestamp_column and self.timestamp_column in self.columns:
            raise ValueError(
                f"columns: {self.timestamp_column!r} is the timestamp_column, not a channel"
            )


@dataclass
class Recording:
    """A file as read: rows in file order (load_recording), or in time order with what
    had to be moved or dropped counted in `order_counts` (shared_recording)."""

    samples: npt.NDArray[np.float32]  # (n, channels)
    times: npt.NDArray[np.float64] | None  # (n,) epoch seconds, or None
    names: tuple[str, ...]
    bad_rows: int
    holes: npt.NDArray[np.int64]  # rows that follow a skipped row
    decimal_comma_rows: int = 0
    # out_of_order_times, bad_times, duplicate_times (set once put in time order)
    order_counts: dict[str, int] = field(default_factory=dict)


def _iso_time(text: str) -> float:
    t = text.strip()
    if t.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not take "Z"
        t = t[:-1] + "+00:00"
    return datetime.fromisoformat(t).timestamp()


def _size_scale(value: float) -> float:
    for limit, scale in _UNIT_LIMITS:
        if value > limit:
            return scale
    return 1.0


def _epoch_scale(values: npt.NDArray[np.float64], unit: str, path: Path) -> float:
    """Seconds per unit of a numeric timestamp column. SourceError: with `auto`, values
    of different units in one column (a recorder switched from seconds to ms): read by
    one unit, half the file would land years away."""
    if unit != "auto":
        return _UNITS[unit]
    finite = np.abs(values[np.isfinite(values)])
    if not len(finite):
        return 1.0
    scale = _size_scale(float(np.median(finite)))
    lo, hi = _size_scale(float(finite.min())), _size_scale(float(finite.max()))
    if lo != hi:
        odd = np.isfinite(values) & (np.vectorize(_size_scale)(np.abs(values)) != scale)
        row = int(np.flatnonzero(odd)[0])
        raise SourceError(
            f"{path}: timestamp column mixes units: {values[row]:.17g} (data row {row + 1}) "
            f"is not in the unit of most of the column ({_unit_name(scale)}); fix the file "
            'or set timestamp_unit ("s", "ms", "us" or "ns")'
        )
    return scale


def _unit_name(scale: float) -> str:
    return next(name for name, s in _UNITS.items() if s == scale)


def _times(raw: list[str], unit: str, path: Path) -> npt.NDArray[np.float64]:
    try:
        nums = np.asarray([float(x) for x in raw], dtype=np.float64)
    except ValueError:
        nums = None
    if nums is not None:
        return nums * _epoch_scale(nums, unit, path)
    try:
        return np.asarray([_iso_time(x) for x in raw], dtype=np.float64)
    except ValueError as e:
        raise SourceError(
            f"{path}: timestamp column: {_first_bad_time(raw) or e}; expected epoch "
            "seconds/milliseconds or ISO 8601 (e.g. 2024-03-31T00:59:50.000+01:00), "
            "one kind in the whole column"
        ) from e


def _first_bad_time(raw: list[str]) -> str:
    """Which value spoils the column: the first that is neither a number nor ISO 8601
    (not the first number of a numeric column with one bad row)."""
    kinds: set[str] = set()
    for i, x in enumerate(raw):
        try:
            float(x)
            kinds.add("number")
            continue
        except ValueError:
            pass
        try:
            _iso_time(x)
            kinds.add("ISO 8601")
        except ValueError:
            return f"{x!r} (data row {i + 1}) is not a time"
    return "mixes numbers and ISO 8601 times" if len(kinds) > 1 else ""


_CSV_LIMIT_WHY = "a field longer than 128 KiB, or an unbalanced quote"


def _csv_rows(text: str, delimiter: str) -> Iterator[list[str] | None]:
    """The file's CSV rows; None for a row the csv module rejects (a field over its
    128 KiB limit, e.g. a recorder that lost its line ends), so it is counted as a bad
    row like any other, not a crash. The reader resumes at the next line."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error:
            yield None


def _decimal_hint(path: Path, o: Options) -> str:
    if o.decimal == ",":
        return ""
    alt = ";" if o.delimiter == "," else o.delimiter
    return (
        f"; values look written with a decimal comma ('3,14'): set decimal = \",\" "
        f'(and delimiter = "{alt}") in the replay source for {path.name}'
    )


def load_recording(path: Path, o: Options) -> Recording:  # noqa: PLR0912, PLR0915 - one pass
    """The file's rows. SourceError: unreadable, no header, missing columns, no usable
    row (with a hint when the values use decimal commas or another delimiter)."""
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            why = "not in numpy's .npy format" if "pickle" in str(e) else str(e)
            raise SourceError(f"{path}: not a readable .npy array: {why}") from e
        if arr.ndim != 2:
            raise SourceError(f"{path}: expected a 2-D array (samples, channels), got {arr.shape}")
        names = o.columns or tuple(f"ch{i}" for i in range(arr.shape[1]))
        if len(names) != arr.shape[1]:
            raise SourceError(f"{path}: {arr.shape[1]} columns but {len(names)} names configured")
        return Recording(arr.astype(np.float32), None, names, 0, np.empty(0, np.int64))
    try:
        # universal newlines: LF, CR LF and CR-only files all read as lines
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read: {e}") from e
    rows = _csv_rows(text, o.delimiter)
    first = next(rows, [])
    if first is None:
        raise SourceError(f"{path}: the header row does not read as CSV ({_CSV_LIMIT_WHY})")
    header = [h.strip() for h in first]
    if not header:
        raise SourceError(f"{path}: empty file (expected a header row)")
    wanted = o.columns or tuple(h for h in header if h != o.timestamp_column)
    missing = [c for c in (*wanted, o.timestamp_column) if c and c not in header]
    if missing:
        seps = [d for d in ";\t|" if len(header) == 1 and d in header[0]]
        hint = f"; the header is one column: set delimiter = {seps[0]!r}?" if seps else ""
        raise SourceError(f"{path}: columns not in header: {missing} (header: {header}){hint}")
    idx = [header.index(c) for c in wanted]
    tidx = header.index(o.timestamp_column) if o.timestamp_column else None
    comma = o.decimal == ","
    vals: list[list[float]] = []
    traw: list[str] = []
    holes: list[int] = []
    bad = commas = 0
    for row in rows:
        if row is not None and (not row or (len(row) == 1 and not row[0].strip())):
            continue
        if row is None or len(row) != len(header):
            bad += 1
            commas += row is not None and len(row) > len(header) and o.delimiter == ","
            if not holes or holes[-1] != len(vals):
                holes.append(len(vals))
            continue
        fields = [row[i].replace(",", ".") if comma else row[i] for i in idx]
        try:
            rec = [float(f) if f.strip() else math.nan for f in fields]
        except ValueError:
            bad += 1
            commas += looks_like_decimal_commas(fields)
            if not holes or holes[-1] != len(vals):
                holes.append(len(vals))
            continue
        vals.append(rec)
        if tidx is not None:
            # the decimal mark applies to a numeric timestamp too (and ISO 8601 allows ",")
            traw.append(row[tidx].replace(",", ".") if comma else row[tidx])
    if not vals:
        hint = _decimal_hint(path, o) if commas else ""
        raise SourceError(f"{path}: no usable rows ({bad} malformed){hint}")
    if commas:
        log.warning("%s: %d rows skipped%s", path, bad, _decimal_hint(path, o))
    ts = _times(traw, o.timestamp_unit, path) if tidx is not None else None
    hole_rows = np.asarray([h for h in holes if 0 < h < len(vals)], dtype=np.int64)
    return Recording(np.asarray(vals, dtype=np.float32), ts, tuple(wanted), bad, hole_rows, commas)


def in_time_order(rec: Recording) -> Recording:
    """`rec` with its rows in time order, one per time (the first row of a time wins),
    holes moved with their rows; `order_counts` says how many rows were out of order
    (`out_of_order_times`), had a non-finite time (`bad_times`, dropped) or a repeated
    one (`duplicate_times`, dropped). A recording without times is returned as is."""
    times = rec.times
    if times is None:
        return rec
    finite = np.isfinite(times)
    counts = {
        "out_of_order_times": int((np.diff(times) < 0).sum()),
        "bad_times": int((~finite).sum()),
    }
    order = np.argsort(times, kind="stable")  # NaN last
    st = times[order]
    keep = np.isfinite(st)
    keep[1:] &= st[1:] != st[:-1]  # the first row of a time wins
    counts["duplicate_times"] = int((np.isfinite(st) & ~keep).sum())
    if not counts["out_of_order_times"] and keep.all():
        return replace(rec, order_counts=counts)
    # a hole before row h: before the first kept row at or after its new place
    place = np.empty_like(order)
    place[order] = np.arange(len(order))
    new_index = np.cumsum(keep) - 1
    kept_holes = set()
    for h in rec.holes:
        after = np.flatnonzero(keep[place[h] :])
        if len(after):
            kept_holes.add(int(new_index[place[h] + after[0]]))
    rows = order[keep]
    return replace(
        rec,
        samples=rec.samples[rows],
        times=st[keep],
        holes=np.asarray(sorted(kept_holes), dtype=np.int64),
        order_counts=counts,
    )


# Recordings being replayed, by the file's identity and the options that shape how it
# reads. Weak: held by the sources replaying it, freed with the last of them.
_SHARED: weakref.WeakValueDictionary[tuple[object, ...], Recording] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def shared_recording(path: Path, o: Options) -> Recording:
    """`load_recording` put in time order (`in_time_order`), shared: a file (the same
    device, inode, size, modification and change time) read with the same options is
    read once while any stream replays it; its arrays are read-only. A changed or
    replaced file is read again (a rewrite that keeps the modification time, as `cp -p`
    does, still changes the change time). SourceError as load_recording."""
    try:
        st = path.stat()
    except OSError:
        return in_time_order(load_recording(path, o))  # which says what is wrong
    key = (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        tuple(o.columns),
        o.timestamp_column,
        o.delimiter,
        o.decimal,
        o.timestamp_unit,
    )
    with _SHARED_LOCK:
        rec = _SHARED.get(key)
    if rec is not None:
        return rec
    rec = in_time_order(load_recording(path, o))  # outside the lock: a CSV takes seconds
    for a in (rec.samples, rec.times, rec.holes):
        if a is not None:
            a.flags.writeable = False  # shared by every stream that replays the file
    with _SHARED_LOCK:
        return _SHARED.setdefault(key, rec)


def load_table(
    path: Path, o: Options
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64] | None, tuple[str, ...], int]:
    """(samples, timestamps or None, channel names, bad rows skipped), rows in file order."""
    r = load_recording(path, o)
    return r.samples, r.times, r.names, r.bad_rows


def _sorted_ints(values: Iterable[int]) -> npt.NDArray[np.int64]:
    """Distinct values in order, as numpy's set operations return them. Not
    np.union1d/np.setdiff1d: numpy 2's unique imports numpy.ma, ~3 MB resident in the
    agent for a few row numbers (issue 15)."""
    return np.array(sorted(set(values)), dtype=np.int64)


def median_step(times: npt.NDArray[np.float64]) -> float:
    """Median positive step between timestamps, seconds (0.0 if none)."""
    d = np.diff(times)
    d = d[d > 0]
    return float(np.median(d)) if len(d) else 0.0


def _snap(step: float) -> float:
    """A step read from epoch floats, snapped to whole microseconds when that is within
    1 ppm (0.0099999905 -> 0.01: 100 Hz, not 100.000095 Hz); otherwise as measured."""
    near = round(step, 6)
    return near if near > 0 and abs(near - step) <= 1e-6 * step else step


class ReplaySource(Source):
    kind = "replay"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self._data = np.empty((0, 0), np.float32)
        self._recording: Recording | None = None  # keeps the shared copy alive
        self._times: npt.NDArray[np.float64] | None = None
        self._starts = np.zeros(1, np.int64)  # rows where a contiguous run begins
        # the same as a list and a set: looked up once per block (bisect and `in` on a
        # few ints cost a fraction of numpy's searchsorted and elementwise == on a block)
        self._start_list = [0]
        self._start_set = {0}
        self._names: tuple[str, ...] = tuple(options.columns)
        self._rate = float(options.rate_hz) or DEFAULT_RATE_HZ
        self._loaded = False
        self._pos = 0
        self._seq = 0
        self._pass = 0  # loop passes completed
        self._period_s = 0.0  # one pass of the file, seconds (time shift per loop pass)
        self._t_base = 0.0  # without timestamps: wall time at open = time of sample 0
        self._gap = False
        self._pacer = Pacer(options.speed)

    @property
    def channels(self) -> tuple[str, ...]:
        if not self._loaded:
            self._load()
        return self._names

    @property
    def rate_hz(self) -> float:
        """rate_hz if set, else the timestamps' rate, else 1 Hz."""
        if not self._loaded:
            try:
                self._load()
            except SourceError:
                return self._rate  # unreadable: open() says why, status still renders
        return self._rate

    def _load(self) -> None:
        o: Options = self.options
        rec = self._recording = shared_recording(Path(o.path), o)
        data, times, holes = rec.samples, rec.times, rec.holes
        if rec.bad_rows:
            self.count("bad_rows", rec.bad_rows)
        if rec.decimal_comma_rows:
            self.count("decimal_comma_rows", rec.decimal_comma_rows)
        for what, k in rec.order_counts.items():
            if k:
                self.count(what, k)
        if times is not None:
            step = median_step(times)
            if not o.rate_hz and step > 0:
                self._rate = 1.0 / _snap(step)
            jumps = np.flatnonzero(np.diff(times) > GAP_PERIODS / self._rate) + 1
            # a skipped row is counted as bad_rows
            jumps = _sorted_ints(set(jumps.tolist()) - set(holes.tolist()))
            if len(jumps):
                self.count("time_gaps", len(jumps))
            holes = _sorted_ints([*holes.tolist(), *jumps.tolist()])
            span = float(times[-1] - times[0]) if len(times) else 0.0
            self._period_s = span + 1.0 / self._rate
        else:
            self._period_s = len(data) / self._rate
        self._data, self._times, self._names = data, times, rec.names
        self._starts = _sorted_ints([0, *holes.tolist()])
        self._start_list = [int(x) for x in self._starts]
        self._start_set = set(self._start_list)
        self._loaded = True

    @property
    def rows(self) -> int:
        """Rows replayed per pass (after skipped rows and repeated times are dropped).
        SourceError: the file cannot be read."""
        if not self._loaded:
            self._load()
        return len(self._data)

    @property
    def longest_run(self) -> int:
        """Rows in the file's longest stretch without a hole (windows never span one).
        SourceError: the file cannot be read."""
        if not self._loaded:
            self._load()
        ends = np.append(self._starts[1:], len(self._data))
        return int(np.max(ends - self._starts)) if len(self._data) else 0

    @property
    def nominal_rate_hz(self) -> float | None:
        return self.rate_hz if self.options.speed == 1.0 else None

    def open(self) -> None:
        if not self._loaded:
            self._load()
        if self._t_base == 0.0:
            self._t_base = time.time()
        if len(self._data) == 0:
            raise SourceError(f"{self.options.path}: no rows with usable times")

    def _time(self, a: int, b: int) -> tuple[float, float, npt.NDArray[np.float64] | None]:
        """(time of row a, time of row b-1, per-row times or None) in the current pass,
        seconds. Without a timestamp column the rows lie on the rate's grid, so a block
        carries t0 and its rate only (Block.time_of), not an array of times a turn at
        max speed would make, join and drop for every 1,024 rows."""
        shift = self._pass * self._period_s
        if self._times is not None:
            times = self._times[a:b] + shift
            return float(times[0]), float(times[-1]), times
        at = self._t_base + shift  # the same sums as a per-row array made: row / rate + at
        return a / self._rate + at, (b - 1) / self._rate + at, None

    def read(self, timeout: float) -> Block | None:
        o = self.options
        n_total = len(self._data)
        if self._pos >= n_total:
            if not o.loop:
                self.finished = True
                return None
            self._pos = 0
            self._pass += 1
            self._gap = True  # the file's end does not run on into its start
        # a block never crosses a hole: it ends at the next run start
        nxt = bisect.bisect_right(self._start_list, self._pos)
        stop = self._start_list[nxt] if nxt < len(self._start_list) else n_total
        end = min(self._pos + o.block, stop)
        t0, last, times = self._time(self._pos, end)
        # pacing follows the samples' own times, across loop passes too
        first = float(self._times[0]) if self._times is not None else self._t_base
        if not self._pacer.wait(last - first, timeout):
            return None
        gap = self._gap or (self._pos > 0 and self._pos in self._start_set)
        blk = Block(self._data[self._pos : end], t0, self._seq, self._rate, gap, times)
        self._gap = False
        self._seq += end - self._pos
        self._pos = end
        return blk


SOURCE_CLASS = ReplaySource
