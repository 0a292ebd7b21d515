"""A config saved in another encoding than UTF-8 (Notepad's "Unicode" is UTF-16; older
editors write Latin-1) is refused saying so and what to do, not with a codec error."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.errors import ConfigError

BODY = 'device_id = "gw-\u00e9"\n[mqtt]\nenabled = false\n'


@pytest.mark.parametrize(
    ("encoding", "says"),
    [("utf-16", "UTF-16"), ("utf-16-be", "not UTF-8"), ("latin-1", "not UTF-8")],
)
def test_a_config_not_in_utf8_is_refused_with_what_to_do(
    tmp_path: Path, encoding: str, says: str
) -> None:
    p = tmp_path / "agent.toml"
    p.write_bytes(BODY.encode(encoding))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert says in str(e.value)
    assert "save it as UTF-8" in str(e.value)
    assert "codec" not in str(e.value)
