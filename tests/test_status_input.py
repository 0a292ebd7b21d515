"""The status text shows input a source rejected: a serial stream that is "stalled"
while its board sends decimal commas or overlong lines must say so, not only in the
log or status --json."""

from __future__ import annotations

import copy
from typing import Any

from edge_agent.service.status import assess
from edge_agent.service.status_render import render_text
from tests.test_status import BASE, assert_fits, snap, state


def _text(counters: dict[str, Any]) -> str:
    now = 1_000_000.0
    st = state(now)
    st["streams"][0]["counters"] = counters
    st["streams"][0]["sensor_health"] = {"active": ["stalled"]}
    st["streams"].append(copy.deepcopy(BASE["streams"][0]) | {"name": "clean"})
    text = render_text(snap(st), assess(snap(st), now), now)
    assert_fits(text)
    return text


def test_rejected_lines_are_counted_under_their_stream() -> None:
    text = _text(
        {"bad_lines": 1220, "decimal_comma_lines": 1220, "oversized_lines": 3, "frames": 9}
    )
    lines = [ln.strip() for ln in text.splitlines()]
    assert "input: 1220 bad lines, 1220 with decimal commas, 3 oversized lines" in lines
    # one line, under the stream that had them
    assert sum(ln.startswith("input:") for ln in lines) == 1
    assert lines.index("input: 1220 bad lines, 1220 with decimal commas, 3 oversized lines") < next(
        i for i, ln in enumerate(lines) if ln.startswith("clean ")
    )


def test_a_clean_stream_has_no_input_line() -> None:
    assert "input:" not in _text({"frames": 100, "messages": 5})
