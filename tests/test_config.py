import pytest

from edge_agent.config import load_config, parse_config
from edge_agent.errors import ConfigError

MINIMAL = """
device_id = "gw-01"
state_dir = "/var/lib/edge-agent"
[mqtt]
host = "127.0.0.1"
port = 1883
"""


def write(tmp_path, text, name="agent.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_design_config_works(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.device_id == "gw-01"
    assert cfg.mqtt.port == 1883
    assert cfg.mqtt.prefix == "edge"
    assert cfg.streams == ()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[[streams]]\nname="a"\nsource={kind="synthetic"}\n'
            '[[streams]]\nname="b"\nsource={kind="synthetic", rate_hz=-1}\n',
            "agent.toml: streams[1].source.rate_hz: expected a positive number",
        ),
        ('colour = "red"\n', "agent.toml: colour: unknown key"),
        ("[mqtt.tls]\nenabled = 1\n", "agent.toml: mqtt.tls.enabled: expected true or false"),
        ('[outbox]\nmax_bytes = "big"\n', "agent.toml: outbox.max_bytes: expected an integer"),
        ('[[streams]]\nname="a"\nsource={kind="laser"}\n', "streams[0].source.kind: unknown"),
        ('[[streams]]\nname="a"\n', "streams[0].source: required key missing"),
        (
            '[[streams]]\nname="a"\nsource={kind="synthetic"}\n'
            '[[streams]]\nname="a"\nsource={kind="synthetic"}\n',
            "streams[1].name: duplicate",
        ),
        ('[[streams]]\nname="a"\nsource={kind="replay"}\n', "streams[0].source.path: required"),
    ],
)
def test_bad_config_names_file_and_key_path(tmp_path, extra, message):
    # The [mqtt] table of MINIMAL is reopened by "[mqtt.tls]"; put extras first.
    text = extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert message in str(e.value)


def test_toml_syntax_error_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"agent.toml: not valid TOML"):
        load_config(write(tmp_path, "device_id = \n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_device_id_must_be_topic_safe():
    with pytest.raises(ConfigError, match="device_id"):
        parse_config({"device_id": "a/b"}, source="x.toml")
