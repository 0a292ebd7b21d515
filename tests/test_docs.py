"""The configuration reference must list exactly the keys the code accepts."""

import dataclasses
import re
import typing
from pathlib import Path

from edge_agent.config import AgentConfig, SourceSpec, StreamConfig
from edge_agent.sources.registry import options_type, source_kinds

DOC = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
DOC_KEYS = set(re.findall(r"`([a-z_0-9]+)`", DOC))
for header in re.findall(r"`\[+([a-z_.]+)\]+`", DOC):  # tables: `[mqtt.tls]`, `[[streams]]`
    DOC_KEYS |= set(header.split("."))


def _keys(cls, seen=None):
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        out.add(f.name)
        t = hints[f.name]
        if dataclasses.is_dataclass(t) and t is not SourceSpec:  # kinds are checked below
            out |= _keys(t)
    return out


def test_every_config_key_is_documented():
    keys = _keys(AgentConfig) | _keys(StreamConfig)
    for kind in source_kinds():
        keys |= _keys(options_type(kind))
    missing = sorted(keys - DOC_KEYS)
    assert not missing, f"docs/configuration.md lacks: {missing}"


def test_every_source_kind_is_documented():
    for kind in source_kinds():
        assert f"`{kind}`" in DOC, kind
