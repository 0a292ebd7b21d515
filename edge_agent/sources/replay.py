"""Replay recorded data (CSV or .npy) in real time, faster, or as fast as scoring goes.

CSV: a header row names the columns; `columns` selects and orders channels;
`timestamp_column` (seconds, or ISO 8601) gives sample times, else `rate_hz` does.
Rows that do not parse (wrong field count, text in a number column) are skipped and
counted as `bad_rows`; empty or "nan" fields become NaN, which the pipeline treats
as a bad sample (the window is not scored, and it is counted).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import SourceError
from edge_agent.schema import check
from edge_agent.sources.base import Block, Source
from edge_agent.sources.pacing import Pacer

__all__ = ["Options", "ReplaySource", "load_table"]


@dataclass(frozen=True)
class Options:
    path: str = field(metadata=check("nonempty"))
    columns: tuple[str, ...] = ()
    timestamp_column: str = ""
    delimiter: str = ","
    rate_hz: float = field(default=1.0, metadata=check("positive"))
    speed: float = field(default=1.0, metadata=check("nonneg"))
    block: int = field(default=64, metadata=check("positive"))
    loop: bool = False


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.strip()).timestamp()


def load_table(
    path: Path, o: Options
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64] | None, tuple[str, ...], int]:
    """(samples, timestamps or None, channel names, bad rows skipped)."""
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SourceError(f"{path}: not a readable .npy array: {e}") from e
        if arr.ndim != 2:
            raise SourceError(f"{path}: expected a 2-D array (samples, channels), got {arr.shape}")
        names = o.columns or tuple(f"ch{i}" for i in range(arr.shape[1]))
        if len(names) != arr.shape[1]:
            raise SourceError(f"{path}: {arr.shape[1]} columns but {len(names)} names configured")
        return arr.astype(np.float32), None, names, 0
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read: {e}") from e
    rows = csv.reader(io.StringIO(text), delimiter=o.delimiter)
    header = [h.strip() for h in next(rows, [])]
    if not header:
        raise SourceError(f"{path}: empty file (expected a header row)")
    wanted = o.columns or tuple(h for h in header if h != o.timestamp_column)
    missing = [c for c in (*wanted, o.timestamp_column) if c and c not in header]
    if missing:
        raise SourceError(f"{path}: columns not in header: {missing} (header: {header})")
    idx = [header.index(c) for c in wanted]
    tidx = header.index(o.timestamp_column) if o.timestamp_column else None
    vals: list[list[float]] = []
    times: list[float] = []
    bad = 0
    for row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            bad += 1
            continue
        try:
            rec = [float(row[i]) if row[i].strip() else math.nan for i in idx]
            t = _parse_time(row[tidx]) if tidx is not None else 0.0
        except ValueError:
            bad += 1
            continue
        vals.append(rec)
        times.append(t)
    if not vals:
        raise SourceError(f"{path}: no usable rows ({bad} malformed)")
    ts = np.asarray(times, dtype=np.float64) if tidx is not None else None
    return np.asarray(vals, dtype=np.float32), ts, tuple(wanted), bad


class ReplaySource(Source):
    kind = "replay"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self._data = np.empty((0, 0), np.float32)
        self._times: npt.NDArray[np.float64] | None = None
        self._names: tuple[str, ...] = tuple(options.columns)
        self._pos = 0
        self._seq = 0
        self._pacer = Pacer(options.speed)

    @property
    def channels(self) -> tuple[str, ...]:
        if not self._names:
            self._load()
        return self._names

    def _load(self) -> None:
        data, times, names, bad = load_table(Path(self.options.path), self.options)
        self._data, self._times, self._names = data, times, names
        if bad:
            self.count("bad_rows", bad)

    def open(self) -> None:
        if self._data.size == 0:
            self._load()

    def read(self, timeout: float) -> Block | None:
        o = self.options
        n_total = len(self._data)
        if self._pos >= n_total:
            if not o.loop:
                self.finished = True
                return None
            self._pos = 0
        end = min(self._pos + o.block, n_total)
        if self._times is not None:
            offset = float(self._times[end - 1] - self._times[0])
        else:
            offset = self._seq / o.rate_hz + (end - self._pos) / o.rate_hz
        if not self._pacer.wait(offset, timeout):
            return None
        t0 = float(self._times[self._pos]) if self._times is not None else self._seq / o.rate_hz
        blk = Block(self._data[self._pos : end], t0, self._seq, o.rate_hz)
        self._seq += end - self._pos
        self._pos = end
        return blk


SOURCE_CLASS = ReplaySource
