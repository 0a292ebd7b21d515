"""Review of b48490c: JSON tensor data read into FP32 by array('f').

The shortcut refuses every window whose FP32 bytes hold 0.0 or 1.0 anywhere (its
proxy for "a bool may be in it"), and such a window then pays the array('f') attempt
*and* the old type look and numpy conversion. A sensor channel that reads exactly 0
(a current with the motor off, a digital input, integer readings) is common, and
such a batch-1 body parses slower than before the commit (side by side, same run,
`flock /tmp/bench.lock`, 11 interleaved rounds of 3000 parses, medians:
one 0.0 in 256 values 21.6 -> 26.3 us, integer readings 20.6 -> 27.3 us, random
floats 21.8 -> 17.8 us). These windows hold only JSON numbers, so the contract of
`_fp32_numbers` ("flat as FP32 when every value is surely a JSON number") says they
should take the shortcut: a bool is told from 0/1 by its type, which only the few
values equal to 0 or 1 need to be looked at for.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_agent.serving import protocol
from edge_agent.serving.protocol import ModelSpec, parse_infer

SPEC = ModelSpec("m", "m", "m", 1, "onnxruntime_onnx", "window", 64, 4, 1.0)


def _window(seed: int) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).normal(0, 1, 256).astype(np.float32)]


def _with_zero_current(seed: int) -> list[float]:
    w = _window(seed)
    for i in range(3, 256, 4):  # the current column reads 0: the motor is off
        w[i] = 0.0
    return w


NUMBERS_ONLY: list[tuple[str, list[Any]]] = [
    ("one exact 0.0 reading", [0.0 if i == 5 else v for i, v in enumerate(_window(1))]),
    ("a channel at 0.0", _with_zero_current(2)),
    ("a reading of exactly 1.0", [1.0 if i == 7 else v for i, v in enumerate(_window(3))]),
    ("integer readings", [round(v * 10) for v in _window(4)]),
]


@pytest.mark.parametrize(("what", "flat"), NUMBERS_ONLY, ids=[w for w, _ in NUMBERS_ONLY])
def test_a_window_of_json_numbers_holding_zero_or_one_takes_the_shortcut(
    what: str, flat: list[Any]
) -> None:
    assert all(type(v) in (int, float) for v in flat)  # JSON numbers only, no bool
    got = protocol._fp32_numbers(flat)
    assert got is not None, (
        f"{what}: only JSON numbers, yet the shortcut is refused and the body pays both "
        "the array('f') attempt and the long way (slower than before b48490c)"
    )
    np.testing.assert_array_equal(got, np.asarray(flat, dtype=np.float32))


@pytest.mark.parametrize(("what", "flat"), NUMBERS_ONLY, ids=[w for w, _ in NUMBERS_ONLY])
def test_the_same_window_still_parses_to_the_same_values(what: str, flat: list[Any]) -> None:
    body = json.dumps(
        {"inputs": [{"name": "window", "datatype": "FP32", "shape": [1, 64, 4], "data": flat}]}
    ).encode()
    req = parse_infer(body, SPEC)
    want = np.asarray(flat, dtype=np.float32).reshape(1, 64, 4)
    assert req.windows.tobytes() == want.tobytes(), what
