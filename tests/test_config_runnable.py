"""A config that validates runs: `config validate` refuses what the agent could not run
(with the key path and the reason), selftest logs in to the broker for real, and the
README's minimal config and the shipped default config work as written."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import parse_config
from edge_agent.preflight import Finding, check_runnable
from edge_agent.profiles import load_profiles, select
from tests.agentutil import REPO, read_status, run_cli
from tests.conftest import AUTH_USERS
from tests.mosquitto import Broker, TlsFiles
from tests.pty_board import PtyBoard

PROFILE = select("x86-generic", load_profiles()).profile
HEADER = "vib_x,vib_y,vib_z,current\n"


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    p = tmp_path / "normal.csv"
    rows = "".join(f"{i % 7 * 0.1:.2f},0.1,0.2,5.0\n" for i in range(400))
    p.write_text(HEADER + rows)
    return p


def _stream(recording: Path, **extra: Any) -> dict[str, Any]:
    src = {"kind": "replay", "path": str(recording), "rate_hz": 100.0}
    src.update(extra.pop("source", {}))
    return {"name": "press", "source": src, **extra}


def _findings(data: dict[str, Any]) -> list[Finding]:
    cfg = parse_config({"device_id": "gw-01", "mqtt": {"enabled": False}, **data}, source="t")
    return check_runnable(cfg, PROFILE)


def _errors(data: dict[str, Any]) -> dict[str, str]:
    return {f.key: f.message for f in _findings(data) if f.fatal}


def test_a_runnable_config_has_no_errors(recording: Path) -> None:
    assert _errors({"streams": [_stream(recording)]}) == {}


def test_unknown_model_is_refused_at_its_key(recording: Path) -> None:
    errs = _errors({"streams": [_stream(recording, model="vibration-aee")]})
    assert "not found" in errs["streams[0].model"]


def test_missing_replay_file_is_refused(recording: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone.csv"
    errs = _errors({"streams": [_stream(recording, source={"path": str(gone)})]})
    assert errs == {"streams[0].source.path": f"{gone}: no such file"}


def test_csv_columns_missing_from_the_header_are_refused(recording: Path) -> None:
    cols = ["vib_x", "vib_y", "vib_z", "amps"]
    errs = _errors({"streams": [_stream(recording, source={"columns": cols})]})
    assert "amps" in errs["streams[0].source.columns"]
    assert "not in header" in errs["streams[0].source.columns"]


def test_channel_count_that_does_not_fit_the_model_is_refused(recording: Path) -> None:
    cols = ["vib_x", "vib_y", "vib_z"]
    errs = _errors({"streams": [_stream(recording, source={"columns": cols})]})
    msg = errs["streams[0].source.columns"]
    assert "gives 3 channels" in msg
    assert "expects 4" in msg


def test_window_the_model_does_not_take_is_refused(recording: Path) -> None:
    errs = _errors({"streams": [_stream(recording, window=32)]})
    assert "takes windows of exactly 64 samples" in errs["streams[0].window"]


def test_camera_frame_size_that_does_not_fit_the_image_model_is_refused(tmp_path: Path) -> None:
    video = tmp_path / "line.mp4"
    video.write_bytes(b"\0")
    cam = {"kind": "camera", "url": str(video), "width": 64, "height": 64}
    errs = _errors({"streams": [{"name": "cam", "model": "inspection-ae", "source": cam}]})
    assert "set height = 32, width = 32" in errs["streams[0].source"]


def test_missing_ota_root_and_password_files_are_refused(recording: Path, tmp_path: Path) -> None:
    errs = _errors(
        {
            "mqtt": {"password_file": str(tmp_path / "pw")},
            "ota": {"root_file": str(tmp_path / "root.json")},
            "streams": [_stream(recording)],
        }
    )
    assert errs["mqtt.password_file"] == f"{tmp_path / 'pw'}: no such file"
    assert errs["ota.root_file"].startswith(f"{tmp_path / 'root.json'}: no such file")


def test_an_ota_root_that_is_not_json_is_refused(recording: Path, tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text("not json")
    errs = _errors({"ota": {"root_file": str(root)}, "streams": [_stream(recording)]})
    assert "not a JSON root document" in errs["ota.root_file"]


def test_tls_files_missing_or_not_matching_are_refused(
    recording: Path, tmp_path: Path, tls_files: TlsFiles
) -> None:
    base = {"enabled": True, "ca_file": str(tls_files.ca)}
    missing = {**base, "cert_file": str(tmp_path / "c.pem"), "key_file": str(tls_files.client_key)}
    errs = _errors({"mqtt": {"tls": missing}, "streams": [_stream(recording)]})
    assert errs == {"mqtt.tls.cert_file": f"{tmp_path / 'c.pem'}: no such file"}
    wrong_key = {
        **base,
        "cert_file": str(tls_files.client_cert),
        "key_file": str(tls_files.server_key),
    }
    errs = _errors({"mqtt": {"tls": wrong_key}, "streams": [_stream(recording)]})
    assert "cannot be loaded" in errs["mqtt.tls.cert_file"]
    good = {**base, "cert_file": str(tls_files.client_cert), "key_file": str(tls_files.client_key)}
    assert _errors({"mqtt": {"tls": good}, "streams": [_stream(recording)]}) == {}


def test_config_validate_exits_2_naming_the_key_and_the_reason(
    recording: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-01"\n[ota]\nroot_file = "{tmp_path / "root.json"}"\n'
        f'[[streams]]\nname = "s"\nwindow = 32\n'
        f'source = {{ kind = "replay", path = "{recording}", rate_hz = 100 }}\n'
    )
    r = run_cli("config", "validate", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error: ota.root_file: " in r.stderr
    assert "error: streams[0].window: 32 samples" in r.stderr
    assert "2 error(s)" in r.stderr


def test_selftest_fails_a_config_that_cannot_run(recording: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[mqtt]\nenabled = false\n[[streams]]\nname = "s"\n'
        f'source = {{ kind = "replay", path = "{tmp_path / "gone.csv"}" }}\n'
    )
    r = run_cli("selftest", "--config", str(cfg), "--state-dir", str(tmp_path / "st"), timeout=120)
    assert r.returncode == 1
    assert "[FAIL] config runs" in r.stdout
    assert "streams[0].source.path" in r.stdout


def _auth_config(tmp_path: Path, broker: Broker, password: str) -> Path:
    pw = tmp_path / "mqtt-password"
    pw.write_text(password + "\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-01"\n[mqtt]\nport = {broker.port}\nusername = "gw-01"\n'
        f'password_file = "{pw}"\n'
    )
    return cfg


def test_selftest_fails_on_a_wrong_mqtt_password(auth_broker: Broker, tmp_path: Path) -> None:
    cfg = _auth_config(tmp_path, auth_broker, "wrong-password")
    r = run_cli("selftest", "--config", str(cfg), "--state-dir", str(tmp_path / "st"), timeout=120)
    assert r.returncode == 1, r.stdout
    line = next(x for x in r.stdout.splitlines() if " broker " in x)
    assert line.startswith("[FAIL]")
    assert "refused the login" in line


def test_selftest_logs_in_with_the_right_mqtt_password(auth_broker: Broker, tmp_path: Path) -> None:
    cfg = _auth_config(tmp_path, auth_broker, AUTH_USERS["gw-01"])
    r = run_cli("selftest", "--config", str(cfg), "--state-dir", str(tmp_path / "st"), timeout=120)
    assert r.returncode == 0, r.stdout
    assert "accepts the login as 'gw-01'" in r.stdout
    # its own client id: a running agent's session is not taken over
    assert "as edge-agent-gw-01-selftest" in auth_broker.log()


def _readme_config() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"A config this small works.*?```toml\n(.*?)```", text, re.S)
    assert m, "README lost its minimal config"
    return m.group(1)


def test_readme_minimal_config_validates_as_written(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(_readme_config())
    r = run_cli("config", "validate", str(cfg))
    assert r.returncode == 0, r.stderr  # the port not plugged in here is only a warning
    assert "OK" in r.stdout


def test_readme_minimal_config_runs_with_channels_from_the_model_card(
    tmp_path: Path, broker: Broker
) -> None:
    board = PtyBoard(tmp_path / "dev" / "usb-acme-if00")
    text = (
        _readme_config()
        .replace("/dev/serial/by-id/usb-acme-if00", str(board.path))
        .replace("port = 1883", f"port = {broker.port}")
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            board.write_nowait(b"0.1,0.2,0.3,5.0\n" * 10)
            time.sleep(0.1)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    state = tmp_path / "state"
    try:
        r = run_cli("run", "--config", str(cfg), "--state-dir", str(state), "--duration", "6")
    finally:
        stop.set()
        t.join()
        board.close()
    assert r.returncode == 0, r.stdout + r.stderr
    (s,) = read_status(state)["streams"]
    assert s["windows"] > 0
    assert s["model"]["name"].startswith("vibration-ae")


def test_shipped_default_config_validates_and_runs_idle_saying_what_to_add(
    tmp_path: Path,
) -> None:
    shipped = REPO / "packaging" / "agent.toml"
    v = run_cli("config", "validate", str(shipped))
    assert v.returncode == 0, v.stderr
    assert "no streams configured: add a [[streams]] table" in v.stderr
    state = tmp_path / "state"
    r = run_cli("run", "--config", str(shipped), "--state-dir", str(state), "--duration", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no streams configured: add a [[streams]] table" in r.stderr  # the log says what
    # READY=1 went out (systemd keeps the service up), its status line says why DEGRADED
    assert "ready: DEGRADED: no streams configured" in r.stderr
    assert read_status(state)["streams"] == []


def test_run_without_config_or_demo_still_says_what_to_give() -> None:
    r = run_cli("run", "--duration", "1")
    assert r.returncode == 2
    assert "--config FILE with [[streams]], or --demo" in r.stderr


def _tls_config(tmp_path: Path, broker: Broker, files: TlsFiles, ca: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-01"\n[mqtt]\nhost = "localhost"\nport = {broker.port}\n'
        f'[mqtt.tls]\nenabled = true\nca_file = "{ca}"\ncert_file = "{files.client_cert}"\n'
        f'key_file = "{files.client_key}"\n'
    )
    return cfg


def test_selftest_logs_in_over_mutual_tls(
    tls_broker: Broker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    cfg = _tls_config(tmp_path, tls_broker, tls_files, tls_files.ca)
    r = run_cli("selftest", "--config", str(cfg), "--state-dir", str(tmp_path / "st"), timeout=120)
    assert r.returncode == 0, r.stdout
    assert "accepts the login (MQTT 5, TLS)" in r.stdout


def test_selftest_fails_when_the_broker_certificate_does_not_verify(
    tls_broker: Broker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    cfg = _tls_config(tmp_path, tls_broker, tls_files, tls_files.other_ca)
    r = run_cli("selftest", "--config", str(cfg), "--state-dir", str(tmp_path / "st"), timeout=120)
    assert r.returncode == 1, r.stdout
    line = next(x for x in r.stdout.splitlines() if " broker " in x)
    assert line.startswith("[FAIL]")  # a TLS fault is the config's, not a broker that is down
    assert "certificate verify failed" in line
