"""The modbus source against pymodbus's own server: TCP on a loopback port, RTU over a
pair of real pseudo-terminals, driven through the same SourceRunner the agent uses."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pymodbus")

from pymodbus.constants import ExcCodes

from edge_agent.config import parse_config
from edge_agent.sources.base import Block
from edge_agent.sources.registry import create_source
from edge_agent.sources.runner import SourceRunner, SourceState
from tests.agentutil import MODELS, first_stream_scoring
from tests.modbus_device import ModbusDevice
from tests.null_modem import NullModem

TYPES: dict[str, float] = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3_000_000_001,
    "float32": -1234.25,
    "float64": 98765.4321,
}
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]


def _until(pred: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def _runner(source: dict[str, Any]) -> SourceRunner:
    cfg = parse_config(
        {"streams": [{"name": "plc", "source": {"kind": "modbus", **source}}]},
        source="test.toml",
    )
    spec = cfg.streams[0].source
    src = create_source(spec.kind, "plc", spec.options)
    r = SourceRunner(src, backoff_min_s=0.1, backoff_max_s=0.5)
    r.start()
    return r


class Collector:
    """Every block a runner delivers, kept for the test to look at."""

    def __init__(self, runner: SourceRunner) -> None:
        self.r = runner
        self.blocks: list[Block] = []

    def poll(self) -> list[Block]:
        self.blocks.extend(self.r.get(0.1))
        return self.blocks

    def latest(self, pred: Callable[[np.ndarray], bool], what: str) -> np.ndarray:
        """Wait for a sample matching `pred`; return it."""

        def find() -> tuple[np.ndarray] | None:
            for b in reversed(self.poll()):
                if len(b.samples) and pred(b.samples[-1]):
                    return (b.samples[-1],)
            return None

        got: tuple[np.ndarray] = _until(find, what)
        return got[0]

    def count_since(self, mark: int) -> int:
        return sum(len(b.samples) for b in self.poll()[mark:])


@pytest.fixture
def device() -> Iterator[ModbusDevice]:
    d = ModbusDevice(unit_ids=(1, 7))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def stop_runners() -> Iterator[list[SourceRunner]]:
    runners: list[SourceRunner] = []
    yield runners
    for r in runners:
        r.stop()


def test_every_type_in_every_byte_and_word_order_over_tcp(
    device: ModbusDevice, stop_runners: list[SourceRunner]
) -> None:
    channels: list[dict[str, Any]] = []
    expected: list[float] = []
    address = 0
    for data_type, value in TYPES.items():
        for byte_order, word_order in ORDERS:
            device.set_value(
                "holding", address, value, data_type, byte_order=byte_order, word_order=word_order
            )
            channels.append(
                {
                    "name": f"{data_type}-{byte_order}-{word_order}",
                    "address": address,
                    "type": data_type,
                    "byte_order": byte_order,
                    "word_order": word_order,
                }
            )
            expected.append(value)
            address += 5  # a hole of at least one register: each channel its own request
    r = _runner({"port": device.port, "rate_hz": 20.0, "channels": channels})
    stop_runners.append(r)
    row = Collector(r).latest(lambda s: not np.isnan(s).any(), "a complete sample")
    np.testing.assert_allclose(row, np.asarray(expected, np.float32), rtol=1e-7)
    assert r.state is SourceState.RUNNING
    assert not [k for k in r.source.snapshot_counters() if k.startswith("exception")]


def test_source_default_orders_scale_offset_bits_and_unit_ids(
    device: ModbusDevice, stop_runners: list[SourceRunner]
) -> None:
    # a meter that stores 32-bit values low word first ("CDAB") throughout
    device.set_value("input", 100, 231.5, "float32", word_order="little")
    device.set_value("input", 102, 70000, "uint32", word_order="little")
    device.set_value("holding", 0, 1234, "int16")  # tenths of a degree, offset -40
    device.set_value("coil", 3, 1)
    device.set_value("discrete", 17, 1)
    device.set_value("holding", 5, 42, "uint16", unit=7)
    r = _runner(
        {
            "port": device.port,
            "word_order": "little",
            "rate_hz": 20.0,
            "channels": [
                {"name": "volts", "table": "input", "address": 100, "type": "float32"},
                {"name": "energy", "table": "input", "address": 102, "type": "uint32"},
                {"name": "temp", "address": 0, "type": "int16", "scale": 0.1, "offset": -40},
                {"name": "running", "table": "coil", "address": 3},
                {"name": "door", "table": "discrete", "address": 17},
                {"name": "other", "address": 5, "unit_id": 7},
            ],
        }
    )
    stop_runners.append(r)
    row = Collector(r).latest(lambda s: s[5] == 42, "a sample with unit 7's value")
    np.testing.assert_allclose(row, [231.5, 70000, 83.4, 1.0, 1.0, 42], rtol=1e-6)


def test_device_exceptions_are_counted_per_register_and_the_rest_keeps_flowing(
    device: ModbusDevice, stop_runners: list[SourceRunner]
) -> None:
    for a in range(4):
        device.set_value("holding", 10 + a * 2, a + 0.5, "float32")
    r = _runner(
        {
            "port": device.port,
            "rate_hz": 20.0,
            "channels": [
                {"name": f"c{a}", "address": 10 + a * 2, "type": "float32"} for a in range(4)
            ],
        }
    )
    stop_runners.append(r)
    col = Collector(r)
    col.latest(lambda s: not np.isnan(s).any(), "values before the fault")
    device.refuse("holding", 14, ExcCodes.DEVICE_BUSY)
    row = col.latest(lambda s: bool(np.isnan(s[2])), "c2 invalid while refused")
    np.testing.assert_allclose(row[[0, 1, 3]], [0.5, 1.5, 3.5])
    counters = _until(
        lambda: (
            (c := r.source.snapshot_counters()).get("exception:holding:14:device_busy", 0) >= 3
            and c
        ),
        "device_busy counted for holding:14",
    )
    assert counters["split_requests"] == 1  # the merged request split once, then per channel
    assert [k for k in counters if k.startswith("exception")] == [
        "exception:holding:14:device_busy"
    ]
    assert r.state is SourceState.RUNNING  # an answer, even a refusal, is not a disconnect


def test_register_map_change_costs_only_the_moved_register(
    device: ModbusDevice, stop_runners: list[SourceRunner]
) -> None:
    device.set_value("holding", 0, 11, "uint16")
    device.set_value("holding", 1, 22, "uint16")
    device.set_value("holding", 2, 33, "uint16")
    r = _runner(
        {
            "port": device.port,
            "rate_hz": 20.0,
            "channels": [{"name": n, "address": a} for n, a in (("x", 0), ("y", 1), ("z", 2))],
        }
    )
    stop_runners.append(r)
    col = Collector(r)
    col.latest(lambda s: list(s) == [11, 22, 33], "the original map")
    # firmware update: register 1 no longer exists (the value moved elsewhere)
    device.refuse("holding", 1, ExcCodes.ILLEGAL_ADDRESS)
    row = col.latest(lambda s: bool(np.isnan(s[1])), "y invalid after the map changed")
    assert (row[0], row[2]) == (11, 33)
    _until(
        lambda: r.source.snapshot_counters().get("exception:holding:1:illegal_data_address"),
        "illegal_data_address counted for holding:1",
    )
    # the map is put back (or the register reappears): the value returns, no restart
    device.set_value("holding", 1, 23, "uint16")
    device.refuse("holding", 1, None)
    col.latest(lambda s: list(s) == [11, 23, 33], "y back after the map was restored")
    assert r.restarts == 0
    assert r.disconnects == 0


def test_device_that_stops_answering_reconnects_and_leaves_a_hole(
    device: ModbusDevice, stop_runners: list[SourceRunner]
) -> None:
    device.set_value("holding", 0, 5, "uint16")
    r = _runner(
        {"port": device.port, "rate_hz": 20.0, "timeout_s": 0.3,
         "channels": [{"name": "v", "address": 0}]}
    )  # fmt: skip
    stop_runners.append(r)
    col = Collector(r)
    col.latest(lambda s: s[0] == 5, "first value")
    device.mute(True)
    _until(lambda: r.state is SourceState.RECONNECTING, "reconnecting while the device is mute")
    assert "No response" in r.last_error
    _until(lambda: r.source.snapshot_counters().get("timeouts", 0) >= 2, "timeouts counted")
    mark = len(col.poll())
    device.set_value("holding", 0, 6, "uint16")
    device.mute(False)
    col.latest(lambda s: s[0] == 6, "values again after the device answers")
    assert r.state is SourceState.RUNNING
    assert r.restarts == 0  # a silent device does not spend the restart budget
    # the polls missed while away are a gap in the sequence: no window spans it
    seqs = [(b.seq, len(b.samples)) for b in col.poll()]
    gaps = [i for i in range(1, len(seqs)) if seqs[i][0] > seqs[i - 1][0] + seqs[i - 1][1]]
    assert gaps, seqs
    assert min(gaps) >= mark  # none before the device went quiet


def test_server_stopped_and_restarted_on_the_same_port(
    device: ModbusDevice, stop_runners: list[SourceRunner]
) -> None:
    device.set_value("input", 3, -7, "int16")
    r = _runner(
        {"port": device.port, "rate_hz": 20.0, "channels": [
            {"name": "v", "table": "input", "address": 3, "type": "int16"}]}
    )  # fmt: skip
    stop_runners.append(r)
    col = Collector(r)
    col.latest(lambda s: s[0] == -7, "first value")
    device.stop()
    _until(lambda: r.state is SourceState.RECONNECTING, "reconnecting while the server is down")
    _until(lambda: "cannot connect" in r.last_error, "connection refused reported")
    device.set_value("input", 3, -8, "int16")
    device.start()
    col.latest(lambda s: s[0] == -8, "values after the server came back")
    assert r.state is SourceState.RUNNING
    assert r.disconnects >= 1
    assert r.source.snapshot_counters().get("disconnects", 0) >= 1


def test_measured_rate_follows_the_polling_rate(
    device: ModbusDevice, stop_runners: list[SourceRunner]
) -> None:
    r = _runner(
        {"port": device.port, "rate_hz": 50.0, "rate_window_s": 1.0,
         "channels": [{"name": "v", "address": 0}]}
    )  # fmt: skip
    stop_runners.append(r)
    col = Collector(r)
    src: Any = r.source
    _until(lambda: col.poll() and 40 <= src.measured_rate_hz <= 60, "about 50 polls/s measured")
    seqs = [(b.seq, len(b.samples)) for b in col.poll()]
    assert all(seqs[i][0] == seqs[i - 1][0] + seqs[i - 1][1] for i in range(1, len(seqs)))


@pytest.fixture
def line(tmp_path: Path) -> Iterator[NullModem]:
    nm = NullModem(tmp_path / "dev")
    yield nm
    nm.close()


def test_rtu_over_a_serial_line_with_every_type_and_a_cut_cable(
    line: NullModem, stop_runners: list[SourceRunner]
) -> None:
    dev = ModbusDevice(unit_ids=(3,), serial_port=str(line.b), baud=115200)
    dev.start()
    try:
        channels = []
        expected = []
        for k, (data_type, value) in enumerate(TYPES.items()):
            byte_order, word_order = ORDERS[k % 4]
            dev.set_value(
                "holding", k * 4, value, data_type, byte_order=byte_order,
                word_order=word_order, unit=3,
            )  # fmt: skip
            channels.append(
                {"name": data_type, "address": k * 4, "type": data_type,
                 "byte_order": byte_order, "word_order": word_order}
            )  # fmt: skip
            expected.append(value)
        r = _runner(
            {"transport": "rtu", "serial_port": str(line.a), "baud": 115200, "unit_id": 3,
             "rate_hz": 10.0, "timeout_s": 0.3, "max_gap": 4, "channels": channels}
        )  # fmt: skip
        stop_runners.append(r)
        col = Collector(r)
        row = col.latest(lambda s: not np.isnan(s).any(), "a complete sample over RTU")
        np.testing.assert_allclose(row, np.asarray(expected, np.float32), rtol=1e-7)
        line.cut()
        _until(lambda: r.state is SourceState.RECONNECTING, "reconnecting with the cable cut")
        dev.set_value("holding", 0, -1, "int16", unit=3)
        line.join()
        col.latest(lambda s: s[0] == -1, "values after the cable is back")
        assert r.restarts == 0
    finally:
        dev.stop()


# -- end to end: a real agent process scoring a Modbus stream -------------------------


def _inline_table(d: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + "}"


def test_modbus_stream_scores_through_the_agent(device: ModbusDevice, tmp_path: Path) -> None:
    # a 4-channel vibration model fed by four float32 holding registers of a PLC
    def wave(dev: ModbusDevice, t: float) -> None:
        for k in range(4):
            dev.set_value("holding", k * 2, 0.5 * math.sin(2 * math.pi * (3 + k) * t), "float32")

    device.waveform = wave
    wave(device, time.time())
    chans = [{"name": n, "address": k * 2, "type": "float32"}
             for k, n in enumerate(("vib_x", "vib_y", "vib_z", "current"))]  # fmt: skip
    cfg = tmp_path / "agent.toml"
    state = tmp_path / "state"
    cfg.write_text(
        f"""
device_id = "gw-modbus"
models_dir = "{MODELS}"

[mqtt]
enabled = false

[logging]
format = "plain"

[[streams]]
name = "press-plc"
model = "vibration-ae"
variant = "fp32-onnx"

[streams.source]
kind = "modbus"
host = "127.0.0.1"
port = {device.port}
rate_hz = 100.0
channels = [{", ".join(_inline_table(c) for c in chans)}]
"""
    )
    s = first_stream_scoring(cfg, state, "windows scored from the Modbus stream")
    assert s["source_kind"] == "modbus"
    assert s["source_state"] == "running"
    assert math.isfinite(s["last_score"])
    assert s["counters"]["polls"] > 0


def test_rtu_port_that_is_not_there_is_waited_for(
    tmp_path: Path, stop_runners: list[SourceRunner]
) -> None:
    # a USB-RS485 adapter not plugged in yet: wait for it, do not spend the restart budget
    r = _runner(
        {"transport": "rtu", "serial_port": str(tmp_path / "ttyUSB-absent"),
         "channels": [{"name": "v", "address": 0}]}
    )  # fmt: skip
    stop_runners.append(r)
    _until(lambda: r.state is SourceState.RECONNECTING, "reconnecting while the port is absent")
    time.sleep(1.0)
    assert r.state is SourceState.RECONNECTING
    assert r.restarts == 0
    assert "cannot connect" in r.last_error
