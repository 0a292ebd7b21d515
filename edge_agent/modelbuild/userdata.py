"""The user's recorded data for `edge-agent model new`: read CSV/NPY files with the same
parser as the replay source, check them, split each file into a fit part and a held-out
tail, normalise and cut windows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ConfigError, SourceError
from edge_agent.sources.replay import Options, load_table

__all__ = ["Recording", "UserData", "read_recording", "sniff_delimiter", "split", "windows"]

F32 = npt.NDArray[np.float32]
MIN_STD = 1e-9  # relative to 1 + |mean|: below this a channel is constant
DECIMAL_HINT = "values look written with a decimal comma ('3,14')"


@dataclass(frozen=True)
class Recording:
    path: Path
    samples: F32  # (rows, channels), rows with NaN kept (they break windows)
    times: npt.NDArray[np.float64] | None
    labels: npt.NDArray[np.bool_] | None  # per row, from --label-column
    bad_rows: int = 0  # rows skipped: a field not a number, or another number of fields


@dataclass(frozen=True)
class UserData:
    fit: tuple[F32, ...]  # per file, its fit part (rows, channels)
    held_out: tuple[F32, ...]  # per file, its held-out tail
    mean: F32
    std: F32
    rate_hz: float


def sniff_delimiter(path: Path) -> str:
    """`,`, `;` or tab: whichever the header line holds most of."""
    try:
        with path.open(encoding="utf-8-sig") as f:
            head = f.readline()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): save the CSV as UTF-8"
        ) from e
    return max((",", ";", "\t"), key=head.count)


def read_recording(
    path: Path,
    columns: tuple[str, ...],
    *,
    timestamp_column: str = "",
    delimiter: str = "auto",
    decimal: str = ".",
    label_column: str = "",
) -> Recording:
    """One file's channels (and labels if asked and present). ConfigError: a column is
    missing or the file is unreadable."""
    if not path.is_file():
        what = "no such file"
        if path.is_dir():
            what = "is a directory: name the CSV or .npy files in it"
        raise ConfigError(f"{path}: {what}")
    if path.suffix == ".npy" and (timestamp_column or label_column):
        raise ConfigError(
            f"{path}: an .npy array has no named columns: leave out --timestamp-column and "
            "--label-column (give --rate-hz), or use a CSV"
        )
    delim = sniff_delimiter(path) if delimiter == "auto" and path.suffix != ".npy" else delimiter
    if delim == "auto":
        delim = ","
    comma = decimal == ","
    if comma and delim == ",":
        raise ConfigError(f"{path}: --decimal , but the delimiter is , too: set --delimiter ';'")
    opts = Options(
        path=str(path),
        columns=columns,
        timestamp_column=timestamp_column,
        delimiter=delim,
        decimal="," if comma else ".",
    )
    try:
        x, t, _, bad = load_table(path, opts)
        labels = None
        if label_column:
            lo = Options(
                path=str(path),
                columns=(label_column,),
                delimiter=delim,
                decimal="," if comma else ".",
            )
            lab = load_table(path, lo)[0][:, 0]
            if len(lab) != len(x):
                raise ConfigError(f"{path}: label column {label_column!r} has unparsable rows")
            labels = np.nan_to_num(lab) > 0.5
    except SourceError as e:
        text = str(e)
        if DECIMAL_HINT in text:  # the replay source's hint names its config keys
            text = text.split(DECIMAL_HINT, maxsplit=1)[0] + f"{DECIMAL_HINT}: add --decimal ,"
        raise ConfigError(f"{text} (check --columns, --timestamp-column, --delimiter)") from e
    return Recording(path, x, t, labels, bad)


def rate_of(recs: list[Recording], default: float) -> float:
    """Samples per second from the timestamps' median step, else `default`."""
    steps = [np.diff(r.times) for r in recs if r.times is not None and len(r.times) > 1]
    if not steps:
        return default
    dt = float(np.median(np.concatenate(steps)))
    return 1.0 / dt if dt > 0 and math.isfinite(dt) else default


def split(
    recs: list[Recording], names: tuple[str, ...], holdout: float, window: int, rate_hz: float
) -> UserData:
    """Each file's first (1 - holdout) rows fit; its tail is held out. Statistics come
    from the fit rows. ConfigError when a channel is constant or the data is too short."""
    fit, held = [], []
    for r in recs:
        n_fit = len(r.samples) - round(holdout * len(r.samples))
        fit.append(r.samples[:n_fit])
        held.append(r.samples[n_fit:])
    allfit = np.concatenate(fit)
    good = allfit[np.all(np.isfinite(allfit), axis=1)]
    if len(good) < 2 * window:
        raise ConfigError(
            f"only {len(good)} usable rows to fit on (window {window}): give more data "
            "or a smaller --window"
        )
    mean = good.mean(0, dtype=np.float64)
    std = good.std(0, dtype=np.float64)
    for i, name in enumerate(names):
        if not std[i] > MIN_STD * (1 + abs(mean[i])):
            raise ConfigError(
                f"channel {name!r} is constant in the fit data ({mean[i]:g}): a model cannot "
                "learn from it; leave it out of --columns"
            )
    return UserData(
        tuple(fit), tuple(held), mean.astype(np.float32), std.astype(np.float32), rate_hz
    )


def windows(x: F32, window: int, hop: int) -> F32:
    """(rows, C) -> (n, window, C) windows `hop` apart, skipping any holding NaN/inf."""
    if len(x) < window:
        return np.empty((0, window, x.shape[1]), np.float32)
    v = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)[::hop]
    w = np.ascontiguousarray(v.transpose(0, 2, 1)).astype(np.float32)
    ok = np.all(np.isfinite(w.reshape(len(w), -1)), axis=1)
    out: F32 = w[ok]
    return out
