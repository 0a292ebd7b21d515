"""PLCs and meters over Modbus TCP or RTU (serial), polled at a fixed rate.

Each poll reads every configured channel (registers merged into as few requests as
the map allows, see modbus_decode.py) and yields one sample. pymodbus is imported
only when a modbus stream opens (the `modbus` extra).

Two kinds of failure are told apart:
- the device answers with a Modbus exception (a register that does not exist, a busy
  device): the channel's value is NaN for that poll and the exception is counted per
  register (`exception:holding:100:illegal_data_address` in the stream's counters);
  if a merged request is refused, its channels are read one by one from then on, so a
  changed register map costs only the registers that moved;
- the device does not answer at all (timeout, connection refused or lost, port gone):
  SourceDisconnectedError, so the runner shows `reconnecting` and reconnects with
  backoff, and the sample sequence skips the polls missed while it was away.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edge_agent.errors import SourceDisconnectedError, SourceError
from edge_agent.schema import check
from edge_agent.sources.base import Block, Source
from edge_agent.sources.modbus_decode import (
    Channel,
    Order,
    Read,
    channel_value,
    exception_name,
    plan_reads,
    split_read,
)
from edge_agent.sources.rate import RateMeter

__all__ = ["Channel", "ModbusSource", "Options"]

log = logging.getLogger(__name__)

# Polls gathered into one block at high poll rates: fewer, larger blocks for the
# pipeline, at most this much added latency.
BATCH_S = 0.05


@dataclass(frozen=True)
class Options:
    """One Modbus device (or one RTU line's default unit) and the channels read from it."""

    channels: tuple[Channel, ...] = field(metadata=check("nonempty"))
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = "127.0.0.1"
    port: int = field(default=502, metadata=check("port"))
    serial_port: str = ""  # rtu: /dev/ttyUSB0, better /dev/serial/by-id/...
    baud: int = field(default=19200, metadata=check("positive"))
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = 1  # slave / device id; channels may override it
    rate_hz: float = field(default=10.0, metadata=check("positive"))
    timeout_s: float = field(default=1.0, metadata=check("positive"))
    byte_order: Order = "big"
    word_order: Order = "big"
    # registers between two channels that one request may read across (0 = adjacent only)
    max_gap: int = field(default=0, metadata=check("nonneg"))
    rate_window_s: float = field(default=10.0, metadata=check("positive"))

    def __post_init__(self) -> None:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"channels: duplicate names in {names}")
        if not 0 <= self.unit_id <= 255:
            raise ValueError(f"unit_id must be 0-255, got {self.unit_id}")
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError("transport 'rtu' needs serial_port (e.g. /dev/ttyUSB0)")

    def where(self) -> str:
        if self.transport == "tcp":
            return f"modbus tcp {self.host}:{self.port}"
        return f"modbus rtu {self.serial_port}"


class ModbusSource(Source):
    kind = "modbus"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self._client: Any = None
        self._reads: list[Read] = []
        self._meter = RateMeter(options.rate_window_s)
        self._period = 1.0 / options.rate_hz
        self._next_poll = 0.0
        self._next = 0  # seq of the next sample
        self._last_poll_at: float | None = None  # monotonic time of the last good poll

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.options.channels)

    @property
    def measured_rate_hz(self) -> float:
        """Polls/s actually completed over the last `rate_window_s` (0.0 at first)."""
        return self._meter.rate_hz

    def open(self) -> None:
        try:
            from pymodbus.client import ModbusSerialClient, ModbusTcpClient
        except ImportError as e:
            raise SourceError(
                "the modbus source needs pymodbus: pip install 'pymodbus>=3.16,<4' (modbus extra)"
            ) from e
        # pymodbus logs every failed connect at error level; our own messages say it once
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        o: Options = self.options
        client: Any
        if o.transport == "tcp":
            client = ModbusTcpClient(o.host, port=o.port, timeout=o.timeout_s, retries=0)
        else:
            client = ModbusSerialClient(
                o.serial_port,
                baudrate=o.baud,
                parity=o.parity,
                stopbits=o.stopbits,
                bytesize=o.bytesize,
                timeout=o.timeout_s,
                retries=0,
            )
        try:
            ok = client.connect()
        except (OSError, ValueError) as e:  # a serial path that is not a tty, bad settings
            client.close()
            raise SourceError(f"{o.where()}: cannot open: {e}") from e
        if not ok:
            client.close()
            raise SourceDisconnectedError(f"{o.where()}: cannot connect (device down or absent)")
        self._client = client
        self._reads = list(plan_reads(o.channels, o.unit_id, max_gap=o.max_gap))
        # A TCP gateway accepts connections even when the device behind it is silent:
        # only an answer (values or a Modbus exception) shows the device is there.
        self._request(self._reads[0])
        self._meter.reset()
        self._next_poll = time.monotonic()
        if self._last_poll_at is not None:
            # the polls missed while away are a hole the windows must not span
            missed = (self._next_poll - self._last_poll_at) / self._period - 1.0
            self._next += max(1, math.floor(missed))
        log.info(
            "source %s: %s open, %d channels in %d requests at %g Hz",
            self.name,
            o.where(),
            len(o.channels),
            len(self._reads),
            o.rate_hz,
        )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def read(self, timeout: float) -> Block | None:
        if self._client is None:
            raise SourceDisconnectedError(f"{self.options.where()}: not open")
        deadline = time.monotonic() + timeout
        rows: list[list[float]] = []
        t0 = 0.0
        first = 0.0
        while True:
            now = time.monotonic()
            if self._next_poll > now:
                if rows and self._next_poll - first > BATCH_S:
                    break
                wait = min(self._next_poll, deadline) - now
                if wait <= 0:
                    break
                time.sleep(wait)
                continue
            if not rows:
                t0, first = time.time(), now
            rows.append(self._poll())
            self._last_poll_at = now
            self._next_poll += self._period
            if self._next_poll < time.monotonic() - self._period:
                # the device cannot keep up: poll as fast as it answers, no burst to
                # catch up (the measured rate shows it, sensor health flags it)
                self._next_poll = time.monotonic()
            if time.monotonic() >= deadline:
                break
        if not rows:
            return None
        n = len(rows)
        self._meter.add(time.monotonic(), n)
        blk = Block(np.asarray(rows, dtype=np.float32), t0, self._next, self.rate_hz)
        self._next += n
        return blk

    def _poll(self) -> list[float]:
        o: Options = self.options
        row = [math.nan] * len(o.channels)
        k = 0
        while k < len(self._reads):
            rd = self._reads[k]
            reply = self._request(rd)
            if isinstance(reply, int) and len(rd.members) > 1:
                # which register was refused is unknown: read these one by one from now on
                self.count("split_requests")
                self._reads[k : k + 1] = split_read(rd, o.channels)
                continue
            if isinstance(reply, int):
                ch = o.channels[rd.members[0][0]]
                self.count(f"exception:{ch.label()}:{exception_name(reply)}")
            else:
                for i, off in rd.members:
                    row[i] = channel_value(o.channels[i], reply, off, o.byte_order, o.word_order)
            k += 1
        self.count("polls")
        return row

    def _request(self, rd: Read) -> list[int] | list[bool] | int:
        """The reply's words or bits, or the device's exception code."""
        from pymodbus.exceptions import ModbusException, ModbusIOException

        c = self._client
        fn = {
            "holding": c.read_holding_registers,
            "input": c.read_input_registers,
            "coil": c.read_coils,
            "discrete": c.read_discrete_inputs,
        }[rd.table]
        try:
            rr = fn(rd.start, count=rd.count, device_id=rd.unit)
        except (ModbusException, OSError) as e:
            self.count("timeouts" if isinstance(e, ModbusIOException) else "disconnects")
            self.close()
            raise SourceDisconnectedError(
                f"{self.options.where()}: unit {rd.unit} {rd.table} {rd.start}: {e}"
            ) from e
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            if code is None:  # not an exception reply: treat as no answer
                self.close()
                raise SourceDisconnectedError(f"{self.options.where()}: bad reply {rr}")
            return int(code)
        if rd.table in ("coil", "discrete"):
            bits: list[bool] = list(rr.bits)
            return bits
        words: list[int] = list(rr.registers)
        return words


SOURCE_CLASS = ModbusSource
