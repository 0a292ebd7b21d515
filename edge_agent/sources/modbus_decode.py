"""Modbus register maps: which reads to send, and how to turn their words into numbers.

Pure: no sockets, no clocks. A channel names one value in the device's map (a table,
a 0-based protocol address, a data type with its byte and word order, and a linear
scale). `plan_reads` merges channels that sit next to each other in the same table of
the same unit into one request, so one poll costs as few round trips as the map
allows; `decode_registers` turns a read's words into the channel's engineering value.

Byte and word order, for the 32-bit value 0xAABBCCDD (registers as sent on the wire):
  word_order big,    byte_order big    -> [0xAABB, 0xCCDD]  "ABCD" (the Modbus default)
  word_order little, byte_order big    -> [0xCCDD, 0xAABB]  "CDAB" (many PLCs, meters)
  word_order big,    byte_order little -> [0xBBAA, 0xDDCC]  "BADC"
  word_order little, byte_order little -> [0xDDCC, 0xBBAA]  "DCBA"
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.schema import check

__all__ = [
    "EXCEPTION_NAMES",
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "Channel",
    "DataType",
    "Read",
    "channel_value",
    "decode_registers",
    "encode_registers",
    "exception_name",
    "plan_reads",
    "split_read",
]

DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"]
Table = Literal["holding", "input", "coil", "discrete"]
Order = Literal["big", "little"]

# Protocol limits (Modbus application protocol v1.1b3, function codes 1-4).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000

_WORDS: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
                          "float64": 4}  # fmt: skip
_STRUCT: dict[str, str] = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I",
                           "float32": ">f", "float64": ">d"}  # fmt: skip
_BIT_TABLES = ("coil", "discrete")

# Exception codes a device answers with (the standard names, lower case).
EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal_function",
    2: "illegal_data_address",
    3: "illegal_data_value",
    4: "device_failure",
    5: "acknowledge",
    6: "device_busy",
    8: "memory_parity_error",
    10: "gateway_path_unavailable",
    11: "gateway_no_response",
}


def exception_name(code: int) -> str:
    """`illegal_data_address` for 2; `exception_<n>` for a code the standard does not name."""
    return EXCEPTION_NAMES.get(code, f"exception_{code}")


@dataclass(frozen=True)
class Channel:
    """One value in the device's register map.

    table: "holding" (function 3), "input" (4) registers; "coil" (1), "discrete" (2) bits.
    address: 0-based protocol address (a manual's 40101 is holding address 100).
    type: the register data type; None = "uint16" for registers, "bool" for bits.
    byte_order / word_order: None = the source's default (see the module docstring).
    value = raw * scale + offset, in the channel's engineering unit.
    unit_id: None = the source's unit id (slave/device id), else 0-247 for this channel.
    """

    name: str = field(metadata=check("nonempty"))
    address: int = field(metadata=check("nonneg"))
    table: Table = "holding"
    type: DataType | None = None
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit_id: int | None = None

    def __post_init__(self) -> None:
        bits = self.table in _BIT_TABLES
        if bits and self.type not in (None, "bool"):
            raise ValueError(
                f"channel {self.name!r}: a {self.table} is one bit; type must be 'bool' "
                f"(or left out), got {self.type!r}"
            )
        if not bits and self.type == "bool":
            raise ValueError(
                f"channel {self.name!r}: {self.table} registers are 16-bit words; use a "
                "register type (int16, uint16, int32, uint32, float32, float64), or "
                "table = 'coil' / 'discrete' for a bit"
            )
        if self.address > 0xFFFF or self.address + self.size - 1 > 0xFFFF:
            raise ValueError(f"channel {self.name!r}: address {self.address} beyond 65535")
        if self.unit_id is not None and not 0 <= self.unit_id <= 247:
            raise ValueError(f"channel {self.name!r}: unit_id must be 0-247, got {self.unit_id}")

    @property
    def bits(self) -> bool:
        return self.table in _BIT_TABLES

    @property
    def data_type(self) -> str:
        return self.type or ("bool" if self.bits else "uint16")

    @property
    def size(self) -> int:
        """Registers (or bits) this channel spans."""
        return 1 if self.bits else _WORDS[self.data_type]

    def label(self) -> str:
        """`holding:100`: how status and counters name this channel's register."""
        return f"{self.table}:{self.address}"


@dataclass(frozen=True)
class Read:
    """One request: `count` registers/bits from `start` of `table` on `unit`.

    members: (channel index, offset of its first register/bit in the reply) pairs.
    """

    unit: int
    table: Table
    start: int
    count: int
    members: tuple[tuple[int, int], ...]


def plan_reads(
    channels: Sequence[Channel], default_unit: int, *, max_gap: int = 0
) -> tuple[Read, ...]:
    """Group channels into as few requests as the protocol allows.

    Channels of one unit and table are merged when the registers between them number at
    most `max_gap` (0: only adjacent or overlapping ones) and the read stays within the
    protocol's per-request limit. Result order is stable: by unit, table, address.
    """
    keyed = sorted(
        range(len(channels)),
        key=lambda i: (_unit(channels[i], default_unit), channels[i].table, channels[i].address),
    )
    out: list[Read] = []
    cur: list[int] = []

    def flush() -> None:
        if not cur:
            return
        first = channels[cur[0]]
        start = first.address
        end = max(channels[i].address + channels[i].size for i in cur)
        members = tuple((i, channels[i].address - start) for i in cur)
        out.append(Read(_unit(first, default_unit), first.table, start, end - start, members))
        cur.clear()

    for i in keyed:
        ch = channels[i]
        if cur:
            head = channels[cur[0]]
            end = max(channels[j].address + channels[j].size for j in cur)
            limit = MAX_BITS_PER_READ if ch.bits else MAX_REGISTERS_PER_READ
            same = (_unit(ch, default_unit), ch.table) == (_unit(head, default_unit), head.table)
            fits = ch.address + ch.size - head.address <= limit
            if not (same and fits and ch.address - end <= max_gap):
                flush()
        cur.append(i)
    flush()
    return tuple(out)


def split_read(rd: Read, channels: Sequence[Channel]) -> tuple[Read, ...]:
    """`rd` as one request per channel: the fallback that tells which register a device
    refuses when it refuses a merged request."""
    return tuple(
        Read(rd.unit, rd.table, channels[i].address, channels[i].size, ((i, 0),))
        for i, _ in rd.members
    )


def _unit(ch: Channel, default_unit: int) -> int:
    return default_unit if ch.unit_id is None else ch.unit_id


def _to_bytes(words: Sequence[int], byte_order: Order, word_order: Order) -> bytes:
    ws = list(words) if word_order == "big" else list(reversed(words))
    b = b"".join(struct.pack(">H", w & 0xFFFF) for w in ws)
    if byte_order == "little":
        b = b"".join(b[k + 1 : k + 2] + b[k : k + 1] for k in range(0, len(b), 2))
    return b


def decode_registers(
    words: Sequence[int], data_type: str, byte_order: Order = "big", word_order: Order = "big"
) -> float:
    """The raw number held by `words` (exactly the type's register count, as received).

    Raises ValueError on a wrong register count or an unknown type.
    """
    n = _WORDS.get(data_type)
    if n is None:
        raise ValueError(f"not a register data type: {data_type!r}")
    if len(words) != n:
        raise ValueError(f"{data_type} needs {n} registers, got {len(words)}")
    value: float = struct.unpack(_STRUCT[data_type], _to_bytes(words, byte_order, word_order))[0]
    return float(value)


def encode_registers(
    value: float, data_type: str, byte_order: Order = "big", word_order: Order = "big"
) -> list[int]:
    """The inverse of decode_registers (for simulators and tests): the words to send."""
    if data_type not in _STRUCT:
        raise ValueError(f"not a register data type: {data_type!r}")
    fmt = _STRUCT[data_type]
    raw = struct.pack(fmt, value if fmt[-1] in "fd" else int(value))
    if byte_order == "little":
        raw = b"".join(raw[k + 1 : k + 2] + raw[k : k + 1] for k in range(0, len(raw), 2))
    words = [int.from_bytes(raw[k : k + 2], "big") for k in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


def channel_value(
    ch: Channel, reply: Sequence[int] | Sequence[bool], offset: int, byte_order: Order,
    word_order: Order,
) -> float:  # fmt: skip
    """The engineering value of `ch` from a read's reply (words, or bits for bit tables)."""
    if ch.bits:
        raw = 1.0 if reply[offset] else 0.0
    else:
        words = [int(w) for w in reply[offset : offset + ch.size]]
        raw = decode_registers(
            words, ch.data_type, ch.byte_order or byte_order, ch.word_order or word_order
        )
    return raw * ch.scale + ch.offset
