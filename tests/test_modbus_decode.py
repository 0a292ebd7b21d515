"""Register decoding and request planning for the modbus source (pure, no device)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import parse_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from edge_agent.errors import ConfigError
from edge_agent.sources.modbus_decode import (
    MAX_REGISTERS_PER_READ,
    Channel,
    channel_value,
    decode_registers,
    encode_registers,
    exception_name,
    plan_reads,
    split_read,
)

# 0xAABBCCDD as each of the four orders puts it on the wire (the module's table).
WIRE_0XAABBCCDD = {
    ("big", "big"): [0xAABB, 0xCCDD],
    ("big", "little"): [0xCCDD, 0xAABB],
    ("little", "big"): [0xBBAA, 0xDDCC],
    ("little", "little"): [0xDDCC, 0xBBAA],
}
ORDERS = list(WIRE_0XAABBCCDD)


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
def test_uint32_in_each_order_matches_the_documented_wire_layout(
    byte_order: str, word_order: str
) -> None:
    words = WIRE_0XAABBCCDD[(byte_order, word_order)]
    assert decode_registers(words, "uint32", byte_order, word_order) == 0xAABBCCDD  # type: ignore[arg-type]
    assert encode_registers(0xAABBCCDD, "uint32", byte_order, word_order) == words  # type: ignore[arg-type]


def test_known_vectors_for_each_type() -> None:
    assert decode_registers([0xFFFF], "int16") == -1
    assert decode_registers([0xFFFF], "uint16") == 65535
    assert decode_registers([0xFFFF, 0xFFFE], "int32") == -2
    assert decode_registers([0x4049, 0x0FDB], "float32") == pytest.approx(math.pi, rel=1e-7)
    # IEEE 754 double 1.0 = 0x3FF0_0000_0000_0000; "DCBA" reverses all eight bytes
    assert decode_registers([0x3FF0, 0, 0, 0], "float64") == 1.0
    assert decode_registers([0, 0, 0, 0xF03F], "float64", "little", "little") == 1.0
    assert decode_registers([0x0100], "int16", byte_order="little") == 1


@pytest.mark.parametrize(
    ("data_type", "value"),
    [
        ("int16", -12345),
        ("uint16", 54321),
        ("int32", -123456789),
        ("uint32", 3_000_000_001),
        ("float32", -1234.25),
        ("float64", 98765.4321),
    ],
)
@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
def test_every_type_round_trips_in_every_order(
    data_type: str, value: float, byte_order: str, word_order: str
) -> None:
    words = encode_registers(value, data_type, byte_order, word_order)  # type: ignore[arg-type]
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_registers(words, data_type, byte_order, word_order) == value  # type: ignore[arg-type]


@given(st.floats(allow_nan=False, width=32), st.sampled_from(ORDERS))
def test_float32_round_trips_bit_exactly(value: float, orders: tuple[str, str]) -> None:
    words = encode_registers(value, "float32", *orders)  # type: ignore[arg-type]
    assert decode_registers(words, "float32", *orders) == value  # type: ignore[arg-type]


def test_wrong_register_count_or_type_is_refused() -> None:
    with pytest.raises(ValueError, match="float32 needs 2 registers, got 1"):
        decode_registers([1], "float32")
    with pytest.raises(ValueError, match="not a register data type"):
        decode_registers([1], "bool")


def test_scale_offset_and_channel_order_override() -> None:
    ch = Channel(name="t", address=4, type="int16", scale=0.1, offset=-40.0, byte_order="little")
    reply = [0, 0, 0, 0, 0xE803]  # 1000 with its bytes swapped, at offset 4
    # the channel's own byte order wins over the source default passed in
    assert channel_value(ch, reply, 4, "big", "big") == pytest.approx(60.0)
    coil = Channel(name="run", address=3, table="coil")
    assert channel_value(coil, [False, True], 1, "big", "big") == 1.0


def test_exception_names() -> None:
    assert exception_name(2) == "illegal_data_address"
    assert exception_name(6) == "device_busy"
    assert exception_name(99) == "exception_99"


def _ch(name: str, address: int, **kw: object) -> Channel:
    return Channel(name=name, address=address, **kw)  # type: ignore[arg-type]


def test_adjacent_channels_share_one_request() -> None:
    chans = [_ch("b", 2, type="float32"), _ch("a", 0, type="int32"), _ch("c", 4)]
    (rd,) = plan_reads(chans, 1)
    assert (rd.unit, rd.table, rd.start, rd.count) == (1, "holding", 0, 5)
    assert sorted(rd.members) == [(0, 2), (1, 0), (2, 4)]


def test_gaps_tables_and_units_split_requests() -> None:
    chans = [
        _ch("a", 0),
        _ch("b", 3),  # two registers between a and b
        _ch("c", 0, table="input"),
        _ch("d", 1, unit_id=7),
        _ch("e", 0, table="coil"),
        _ch("f", 9, table="coil"),
    ]
    reads = plan_reads(chans, 1)
    assert [(r.unit, r.table, r.start, r.count) for r in reads] == [
        (1, "coil", 0, 1),
        (1, "coil", 9, 1),
        (1, "holding", 0, 1),
        (1, "holding", 3, 1),
        (1, "input", 0, 1),
        (7, "holding", 1, 1),
    ]
    merged = plan_reads(chans, 1, max_gap=8)
    assert [(r.unit, r.table, r.start, r.count) for r in merged] == [
        (1, "coil", 0, 10),
        (1, "holding", 0, 4),
        (1, "input", 0, 1),
        (7, "holding", 1, 1),
    ]


def test_requests_stay_within_the_protocol_limit() -> None:
    chans = [_ch(f"c{i}", i * 4, type="float64") for i in range(64)]  # 256 registers
    reads = plan_reads(chans, 1)
    assert all(r.count <= MAX_REGISTERS_PER_READ for r in reads)
    assert sum(len(r.members) for r in reads) == 64
    assert len(reads) == 3


def test_split_read_gives_one_request_per_channel() -> None:
    chans = [_ch("a", 10, type="float32"), _ch("b", 12)]
    (rd,) = plan_reads(chans, 5)
    assert [(r.unit, r.start, r.count, r.members) for r in split_read(rd, chans)] == [
        (5, 10, 2, ((0, 0),)),
        (5, 12, 1, ((1, 0),)),
    ]


def _cfg(channels: list[dict[str, object]], **src: object) -> None:
    parse_config(
        {"streams": [{"name": "plc", "source": {"kind": "modbus", "channels": channels, **src}}]},
        source="agent.toml",
    )


def test_config_errors_name_the_key_and_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"agent\.toml: streams\[0\]\.source.*one bit"):
        _cfg([{"name": "x", "table": "coil", "address": 1, "type": "float32"}])
    with pytest.raises(ConfigError, match="registers are 16-bit words"):
        _cfg([{"name": "x", "address": 1, "type": "bool"}])
    with pytest.raises(ConfigError, match=r"channels\[0\]\.type: expected one of"):
        _cfg([{"name": "x", "address": 1, "type": "float16"}])
    with pytest.raises(ConfigError, match="needs serial_port"):
        _cfg([{"name": "x", "address": 1}], transport="rtu")
    with pytest.raises(ConfigError, match="beyond 65535"):
        _cfg([{"name": "x", "address": 65535, "type": "float32"}])
    with pytest.raises(ConfigError, match="duplicate names"):
        _cfg([{"name": "x", "address": 1}, {"name": "x", "address": 2}])
    with pytest.raises(ConfigError, match=r"channels\[0\]\.adress: unknown key"):
        _cfg([{"name": "x", "adress": 1}])


def test_the_documented_example_is_a_valid_config() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "sources.md").read_text()
    section = doc.split("## modbus", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(tomllib.loads(example), source="sources.md")
    opts = cfg.streams[0].source.options
    assert [c.name for c in opts.channels] == ["vib_x", "vib_y", "vib_z", "current"]
    assert opts.word_order == "little"
    assert opts.channels[3].unit_id == 2
