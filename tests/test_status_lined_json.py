"""status.json is written line by line by the C JSON encoder (issue 15: the indented
pure-Python encoder held the GIL 1.8-4.9 ms each second): the same document, still
one stream per line for a person reading it, NaN refused as before."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edge_agent.fsutil import lined_json
from edge_agent.service.status_file import StatusFile


def _status(n: int) -> dict[str, object]:
    return {
        "written_at": 1_764_540_000.25,
        "verdict": "OK",
        "reasons": [],
        "streams": [
            {"name": f"pump-{i}", "samples": i * 1000, "alarm": {"on": i % 2 == 0}, "note": "µ°"}
            for i in range(n)
        ],
        "outbox": {"depth": 0, "oldest_created": None},
        "notes": ["a", "b"],
    }


@pytest.mark.parametrize("n", [0, 1, 3, 64])
def test_the_document_is_the_same_json(n: int) -> None:
    doc = _status(n)
    text = lined_json(doc)
    assert json.loads(text) == doc
    assert text.endswith(b"\n")


def test_each_stream_is_a_line_of_its_own_and_keys_are_sorted() -> None:
    lines = lined_json(_status(3)).decode().splitlines()
    for i in range(3):
        assert sum(f'"name": "pump-{i}"' in line for line in lines) == 1
    top = [line.split('"')[1] for line in lines if line.startswith('  "')]
    assert top == sorted(top)


def test_nan_is_refused_as_before() -> None:
    with pytest.raises(ValueError, match="JSON"):
        lined_json({"score": math.nan})


def test_the_status_file_writer_writes_it(tmp_path: Path) -> None:
    results: list[OSError | None] = []
    f = StatusFile(tmp_path / "status.json", results.append)
    assert f.write(_status(2), durable=False, wait_s=30.0)
    assert results == [None]
    assert json.loads((tmp_path / "status.json").read_text()) == _status(2)
