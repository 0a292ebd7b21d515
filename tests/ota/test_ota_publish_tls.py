"""`edge-ota publish` and `edge-ota hint` reach a real mosquitto that wants TLS, a client
certificate (mTLS) and a password, with the agent's own options (CA file, client
certificate and key, password from a file); each wrong part fails with its own clear
error. `edge-ota build` runs the card's golden vectors first and refuses a card whose
vectors do not reproduce, writing no bundle."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from otamodels import REPO, copy_model
from paho.mqtt.enums import CallbackAPIVersion

from ota.announce import Announcement, device_topic, fleet_topic
from tests.mosquitto import (
    MOSQUITTO_PASSWD,
    Broker,
    TlsFiles,
    make_password_file,
    mosquitto_available,
)

pytestmark = pytest.mark.broker

USER, PASSWORD = "operator", "s3cret-operator"


def edge_ota(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ota", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def secure_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Broker]:
    if not mosquitto_available() or MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed")
    d = tmp_path / "broker"
    d.mkdir()
    pw = make_password_file(d / "passwd", {USER: PASSWORD})
    b = Broker(d, tls=tls_files, require_client_cert=True, password_file=pw)
    b.start()
    yield b
    b.stop()


def receive_retained(b: Broker, tls: TlsFiles, topic: str) -> bytes:
    got: queue.Queue[bytes] = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.tls_set(ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
    c.username_pw_set(USER, PASSWORD)
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
    c.on_message = lambda _c, _u, msg: got.put(msg.payload) if msg.retain else None
    c.connect(b.host, b.port)
    c.loop_start()
    try:
        return got.get(timeout=20)
    finally:
        c.disconnect()
        c.loop_stop()


def broker_args(b: Broker, tls: TlsFiles, pw_file: Path, **over: str | Path | None) -> list[str]:
    opts: dict[str, str | Path | None] = {
        "--host": b.host, "--port": str(b.port), "--username": USER,
        "--password-file": pw_file, "--ca-file": tls.ca, "--cert-file": tls.client_cert,
        "--key-file": tls.client_key,
    }  # fmt: skip
    opts.update(over)
    return [str(x) for k, v in opts.items() if v is not None for x in (k, v)]


def test_publish_and_hint_reach_a_tls_mtls_broker_with_a_password_file(
    secure_broker: Broker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    model = copy_model(tmp_path / "m", 2)
    bundle = tmp_path / "v2.bundle"
    r = edge_ota("build", model, "--profiles", "rpi5", "--expires", "30d", "--out", bundle)
    assert r.returncode == 0, r.stderr
    assert "golden vectors reproduce" in r.stdout
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    args = broker_args(secure_broker, tls_files, pw)
    r = edge_ota("publish", bundle, *args, "--device", "gw-01",
                 "--url", "https://models.example/v2.bundle")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ann = Announcement.from_payload(
        receive_retained(secure_broker, tls_files, device_topic("gw-01"))
    )
    assert (ann.manifest["version"], ann.url) == (2, "https://models.example/v2.bundle")
    r = edge_ota("hint", *args, "--group", "line-1")
    assert r.returncode == 0, r.stderr
    hint = json.loads(receive_retained(secure_broker, tls_files, fleet_topic("line-1")))
    assert hint["hint"] == "refresh"


def test_each_wrong_broker_option_fails_with_its_own_error(
    secure_broker: Broker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    model = copy_model(tmp_path / "m", 2)
    bundle = tmp_path / "v2.bundle"
    assert edge_ota("build", model, "--profiles", "rpi5", "--expires", "30d",
                    "--out", bundle).returncode == 0  # fmt: skip
    pw, wrong = tmp_path / "pw", tmp_path / "wrong"
    pw.write_text(PASSWORD)
    wrong.write_text("not-the-password")
    cases = {
        "other CA": (broker_args(secure_broker, tls_files, pw, **{"--ca-file": tls_files.other_ca}),
                     1, "certificate verify failed"),
        "no client certificate": (
            broker_args(secure_broker, tls_files, pw, **{"--cert-file": None, "--key-file": None}),
            1, "cannot connect to MQTT broker"),
        "wrong password": (broker_args(secure_broker, tls_files, wrong), 1, "refused"),
        "missing password file": (
            broker_args(secure_broker, tls_files, tmp_path / "nope"), 2, "cannot read"),
        "cert without key": (broker_args(secure_broker, tls_files, pw, **{"--key-file": None}),
                             2, "cert_file and key_file go together"),
    }  # fmt: skip
    for what, (args, rc, text) in cases.items():
        r = edge_ota("publish", bundle, *args, "--group", "line-1", "--url", "https://x/b")
        assert (r.returncode, "Traceback" in r.stderr) == (rc, False), (what, r.stderr)
        assert text in r.stderr, (what, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)


def test_build_refuses_a_card_whose_golden_vector_is_wrong(tmp_path: Path) -> None:
    model = copy_model(tmp_path / "m", 2)
    card = json.loads((model / "model.json").read_text())
    card["golden"]["scores"][1] *= 2.0
    (model / "model.json").write_text(json.dumps(card))
    out = tmp_path / "v2.bundle"
    r = edge_ota("build", model, "--profiles", "rpi5", "--expires", "30d", "--out", out)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("edge-ota: GoldenVectorError: refusing to build"), r.stderr
    assert "golden vector 1 scores" in r.stderr
    assert not out.exists()
