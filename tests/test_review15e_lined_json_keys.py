"""Review of 03ff6da: lined_json writes a top-level key with the encoder's value form, so
a non-str key (int, float, None, bool) comes out bare (`1: ...`, `null: ...`): not JSON.
json.dumps (the old writer) turned such keys into strings, as the C encoder does for
nested dicts. The agent's own snapshot has str keys only, so this is the helper's
contract (`obj` as JSON, "parses as any JSON"), not a live status.json today."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_agent.fsutil import lined_json


@pytest.mark.parametrize("doc", [{1: "a", 2: "b"}, {None: 1}, {1.5: [1, 2]}, {True: {}}])
def test_a_non_str_top_level_key_still_gives_json_as_before(doc: dict[Any, Any]) -> None:
    old = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
    assert json.loads(lined_json(doc)) == json.loads(old)
