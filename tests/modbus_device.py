"""A pretend PLC: pymodbus's own server (TCP on a free loopback port, or RTU on a serial
line), run in a thread with its own event loop.

The test sets values as a PLC program would (`set_value`), refuses registers with a
Modbus exception (`refuse`: a busy device, or a register map that changed), makes the
device stop answering (`mute`), and stops and restarts the server on the same address.
`waveform` (if set) is called on every request to produce fresh values, so a running
agent sees a live signal.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.sources.modbus_decode import encode_registers

__all__ = ["ModbusDevice", "free_port"]

_FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_REGS = 512  # registers per table (and 512*16 bits for coils / discrete inputs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ModbusDevice:
    def __init__(
        self,
        *,
        unit_ids: tuple[int, ...] = (1,),
        port: int | None = None,
        serial_port: str = "",
        baud: int = 115200,
    ) -> None:
        self.port = port or free_port()
        self.serial_port = serial_port
        self.baud = baud
        self.unit_ids = unit_ids
        self._lock = threading.Lock()
        # (unit, table) -> address -> word (registers) or bool (bits)
        self._values: dict[tuple[int, str], dict[int, Any]] = {}
        self._refused: dict[tuple[int, str, int], ExcCodes] = {}
        self._muted = False
        self.requests = 0
        self.waveform: Callable[[ModbusDevice, float], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- what the test does --------------------------------------------------------------

    def set_value(
        self,
        table: str,
        address: int,
        value: float,
        data_type: str = "uint16",
        *,
        byte_order: str = "big",
        word_order: str = "big",
        unit: int = 1,
    ) -> None:
        with self._lock:
            t = self._values.setdefault((unit, table), {})
            if table in ("coil", "discrete"):
                t[address] = bool(value)
                return
            words = encode_registers(value, data_type, byte_order, word_order)  # type: ignore[arg-type]
            for k, w in enumerate(words):
                t[address + k] = w

    def refuse(self, table: str, address: int, code: ExcCodes | None, unit: int = 1) -> None:
        """Answer any request touching this register with `code` (None: answer again)."""
        with self._lock:
            if code is None:
                self._refused.pop((unit, table, address), None)
            else:
                self._refused[(unit, table, address)] = code

    def mute(self, muted: bool) -> None:
        """Stop answering (requests are read and left unanswered) or answer again."""
        self._muted = muted

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        # building pymodbus's simulated devices takes ~4 s on a loaded 2-core machine:
        # 10 s was not enough when other tests ran beside this one
        if not ready.wait(60):
            raise RuntimeError("modbus test server did not start")
        if not self.serial_port:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError("modbus test server does not accept connections")

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._server = self._thread = None

    def _serve(self, ready: threading.Event) -> None:
        async def main() -> None:
            devices = [self._device(u) for u in self.unit_ids]
            if self.serial_port:
                self._server = ModbusSerialServer(
                    devices, port=self.serial_port, baudrate=self.baud, timeout=0.1
                )
            else:
                self._server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
            self._loop = asyncio.get_running_loop()
            ready.set()
            await self._server.serve_forever()

        asyncio.run(main())

    def _device(self, unit: int) -> SimDevice:
        bits = SimData(0, count=_REGS * 16, values=False, datatype=DataType.BITS)
        regs = SimData(0, count=_REGS, values=0, datatype=DataType.REGISTERS)

        async def action(  # noqa: PLR0917 - the signature pymodbus calls
            fc: int,
            start: int,
            address: int,
            count: int,
            registers: list[int],
            values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            return await self._action(unit, fc, start, address, count, registers=registers)

        return SimDevice(
            id=unit,
            simdata=([bits], [SimData(0, count=_REGS * 16, values=False,
                                      datatype=DataType.BITS)],
                     [regs], [SimData(0, count=_REGS, values=0,
                                      datatype=DataType.REGISTERS)]),
            action=action,
        )  # fmt: skip

    async def _action(
        self, unit: int, fc: int, start: int, address: int, count: int, *, registers: list[int]
    ) -> ExcCodes | None:
        while self._muted:
            await asyncio.sleep(0.05)
        self.requests += 1
        table = _FC_TABLE.get(fc)
        if table is None:
            return None
        if self.waveform is not None:
            self.waveform(self, time.time())
        if table in ("coil", "discrete"):
            # bit tables: `address` is a bit, `count` the 16-bit registers that hold it
            first = (address // 16) * 16
            span = range(first, first + count * 16)
        else:
            span = range(address, address + count)
        with self._lock:
            for a in span:
                code = self._refused.get((unit, table, a))
                if code is not None:
                    return code
            values = dict(self._values.get((unit, table), {}))
        for a in span:
            if a not in values:
                continue
            if table in ("coil", "discrete"):
                r, b = divmod(a, 16)
                mask = 1 << b
                on = mask if values[a] else 0
                registers[r - start] = (registers[r - start] & ~mask) | on
            else:
                registers[a - start] = values[a]
        return None
