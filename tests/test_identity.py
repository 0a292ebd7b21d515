"""The default device_id is unique per machine when the host name is an image default."""

from __future__ import annotations

import pytest

from edge_agent.config import parse_config
from edge_agent.identity import default_device_id, is_generic_hostname, machine_default_device_id

MID = "3d1219c7c4c5404aaa1f6d2a48adfda4"


@pytest.mark.parametrize(
    "host", ["raspberrypi", "RaspberryPi", "ubuntu", "debian", "localhost", "jetson-desktop",
             "jetson-nano", "raspberrypi.local", ""]
)  # fmt: skip
def test_distribution_default_host_names_get_the_machine_id_appended(host: str) -> None:
    assert is_generic_hostname(host)
    got = default_device_id(host, MID)
    assert got.endswith("-3d1219c7")
    assert "/" not in got
    assert "." not in got


def test_two_clones_of_one_image_get_different_ids() -> None:
    a = default_device_id("raspberrypi", MID)
    b = default_device_id("raspberrypi", "0f" * 16)
    assert a != b
    assert a == "raspberrypi-3d1219c7"


def test_a_named_host_keeps_its_name() -> None:
    assert default_device_id("press-line-4", MID) == "press-line-4"
    assert default_device_id("gw-07.plant.example", MID) == "gw-07"


def test_without_a_machine_id_the_host_name_is_used() -> None:
    assert default_device_id("raspberrypi", None) == "raspberrypi"
    assert default_device_id("raspberrypi", "not hex") == "raspberrypi"


def test_config_without_device_id_takes_the_machine_default() -> None:
    cfg = parse_config({}, source="t.toml")
    assert cfg.device_id == machine_default_device_id()
    assert cfg.device_id


def test_configured_device_id_wins() -> None:
    assert parse_config({"device_id": "gw-01"}).device_id == "gw-01"
