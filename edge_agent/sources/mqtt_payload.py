"""Sensor samples carried in MQTT messages. Pure: payload bytes in, samples out.

Accepted JSON shapes (one message):
- `{"t": 1718000000.25, "values": [1.0, 2.0, 3.0]}`          one sample
- `{"t": 1718000000.25, "values": [[1, 2, 3], [4, 5, 6]]}`   several samples
- `{"vib_x": 1.0, "vib_y": 2.0, "current": 3.0}`             one sample by channel name
`t` (epoch time of the first sample: seconds, or ms/us/ns told apart by size as for a
replayed file) is optional; a non-finite `t` is counted (`bad_times`) and not used.
`null` or a non-number is an invalid reading (NaN, counted). Packed binary messages
are frames of docs/serial-protocol.md.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_agent.sources.framing import BinaryFrameParser

__all__ = ["Decoded", "decode_binary", "decode_json"]


@dataclass
class Decoded:
    samples: npt.NDArray[np.float32]  # (n, channels); n == 0 when the message was bad
    t: float | None = None
    errors: Counter[str] = field(default_factory=Counter)


# Epoch magnitudes (now ~1.7e9 s): above these a time is ms, us or ns (as in replay.py).
_EPOCH_UNITS = ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3))


def _epoch_s(t: object, errors: Counter[str]) -> float | None:
    """A message's `t` in epoch seconds; None if absent, not a number or not finite."""
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return None
    v = float(t)
    if not math.isfinite(v):
        errors["bad_times"] += 1
        return None
    scale = next((s for limit, s in _EPOCH_UNITS if abs(v) > limit), 1.0)
    return v * scale


def _empty(channels: int, why: str) -> Decoded:
    return Decoded(np.empty((0, channels), np.float32), None, Counter({why: 1}))


def _num(v: object, errors: Counter[str]) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    errors["bad_values"] += 1
    return math.nan


def decode_json(payload: bytes, channels: tuple[str, ...]) -> Decoded:
    n_ch = len(channels)
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _empty(n_ch, "bad_messages")
    if not isinstance(doc, dict):
        return _empty(n_ch, "bad_messages")
    errors: Counter[str] = Counter()
    ts = _epoch_s(doc.get("t"), errors)
    if "values" in doc:
        vals = doc["values"]
        rows = vals if isinstance(vals, list) and vals and isinstance(vals[0], list) else [vals]
        if not all(isinstance(r, list) and len(r) == n_ch for r in rows):
            return _empty(n_ch, "bad_messages")
        arr = [[_num(v, errors) for v in r] for r in rows]
    else:
        known = [c for c in channels if c in doc]
        if not known:
            return _empty(n_ch, "bad_messages")
        unknown = sum(1 for k in doc if k not in channels and k != "t")
        if unknown:
            errors["unknown_keys"] += unknown
        if len(known) < n_ch:
            errors["missing_values"] += n_ch - len(known)
        arr = [[_num(doc[c], errors) if c in doc else math.nan for c in channels]]
    samples = np.array(arr, dtype=np.float32).reshape(len(arr), n_ch)
    return Decoded(samples, ts, errors)


def decode_binary(payload: bytes, channels: int, scale: float = 1.0) -> Decoded:
    """A message holds whole frames; anything left over is a damaged message."""
    parser = BinaryFrameParser(channels, scale=scale, max_payload=max(len(payload), 1))
    out = parser.feed(payload)
    rest = parser.flush()
    errors = out.errors + rest.errors
    if out.frames == 0:
        errors["bad_messages"] += 1
    return Decoded(out.samples, None, errors)
