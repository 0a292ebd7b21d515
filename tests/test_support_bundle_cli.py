"""`edge-agent support-bundle`: after a real demo run, one bounded .tar.gz with the config
(secrets redacted, named secret files never read), status, models, versions and the
journal or the reason it is missing."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from edge_agent import __version__
from edge_agent.commands.support_bundle import MAX_MEMBER_BYTES, _cut_oldest
from tests.agentutil import MODELS, run_cli

SECRET_IN_FILE = "s3cr3t-in-a-file-7f1c"
SECRET_IN_CONFIG = "hunter2-in-config-91ab"


def _config(tmp_path: Path, state: Path) -> Path:
    pw = tmp_path / "mqtt-password"
    pw.write_text(SECRET_IN_FILE)
    key = tmp_path / "client.key"
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{SECRET_IN_FILE}\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
device_id = "gw-support"
state_dir = "{state}"
models_dir = "{MODELS}"
[mqtt]
enabled = false
username = "plant"
password_file = "{pw}"
password_credential = "mqtt-password"
[mqtt.tls]
key_file = "{key}"
[ota]
"""
    )
    return cfg


def _members(archive: Path) -> dict[str, bytes]:
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            assert m.isfile(), m.name
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read()
    return out


def _no_journalctl_env(tmp_path: Path) -> dict[str, str]:
    """PATH with python only: journalctl is not found, as on a machine without systemd."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    return {**os.environ, "PATH": str(bin_dir)}


@pytest.mark.slow
def test_bundle_after_a_demo_run_has_everything_and_no_secret(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = _config(tmp_path, state)
    # 2000 windows: the demo's injected anomalies raise events into the local history
    r = run_cli("run", "--demo", "--config", str(cfg), "--max-windows", "2000", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    out = tmp_path / "bundle.tar.gz"
    r = run_cli(
        "support-bundle", "--config", str(cfg), "--out", str(out),
        env=_no_journalctl_env(tmp_path),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    assert "journal.txt skipped: journalctl not found" in r.stdout
    members = _members(out)
    assert set(members) == {
        "MANIFEST.json", "config.json", "status.json", "status.txt", "models.json",
        "versions.json", "events.jsonl",
    }  # fmt: skip
    for name, data in members.items():
        assert SECRET_IN_FILE.encode() not in data, name
        assert len(data) <= MAX_MEMBER_BYTES, name

    config: dict[str, Any] = json.loads(members["config.json"])["config"]
    assert config["device_id"] == "gw-support"
    assert config["mqtt"]["username"] == "plant"
    assert config["mqtt"]["password_file"] == "<redacted>"
    assert config["mqtt"]["password_credential"] == "<redacted>"
    assert config["mqtt"]["tls"]["key_file"] == str(tmp_path / "client.key")  # a path only

    status = json.loads(members["status.json"])
    assert status["state"]["device_id"] == "gw-support"
    (stream,) = status["state"]["streams"]
    assert stream["name"] == "demo"
    assert stream["windows"] >= 2000
    assert "demo" in members["status.txt"].decode()
    assert "slots" in json.loads(members["models.json"])
    assert json.loads(members["versions.json"])["agent"] == __version__
    assert members["events.jsonl"] == (state / "events.jsonl").read_bytes()
    events = [json.loads(x) for x in members["events.jsonl"].splitlines()]
    assert any(e.get("stream") == "demo" for e in events), events[:3]

    manifest = json.loads(members["MANIFEST.json"])
    assert manifest["device_id"] == "gw-support"
    assert manifest["skipped"]["journal.txt"].startswith("journalctl not found")
    assert manifest["members"]["status.json"] == len(members["status.json"])


def test_a_config_that_does_not_validate_is_included_redacted(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        f'device_id = "gw-bad"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\npassword = "{SECRET_IN_CONFIG}"\n'
    )
    out = tmp_path / "b.tgz"
    r = run_cli("support-bundle", "--config", str(cfg), "--out", str(out), "--journal-lines", "0")
    assert r.returncode == 0, r.stderr
    members = _members(out)
    doc = json.loads(members["config.json"])
    assert "mqtt.password: unknown key" in doc["error"]
    assert doc["parsed"]["mqtt"]["password"] == "<redacted>"
    assert all(SECRET_IN_CONFIG.encode() not in d for d in members.values())
    skipped = json.loads(members["MANIFEST.json"])["skipped"]
    assert skipped["journal.txt"] == "--journal-lines 0"
    assert "no event raised here yet" in skipped["events.jsonl"]
    assert json.loads(members["status.json"])["verdict"] == "DOWN"  # never ran here


def test_a_password_in_a_url_is_refused_and_kept_out_of_the_bundle(tmp_path: Path) -> None:
    # asyncua takes a user and password from opc.tcp://user:password@host/, so a
    # technician may write one there; it must not reach status, logs or the archive
    cfg = tmp_path / "url.toml"
    cfg.write_text(
        f'device_id = "gw-url"\nstate_dir = "{tmp_path / "state"}"\n'
        '[[streams]]\nname = "press"\nmodel = "vibration-ae"\n'
        '[streams.source]\nkind = "opcua"\n'
        f'url = "opc.tcp://operator:{SECRET_IN_CONFIG}@10.0.0.30:4840/"\n'
        "channels = ["
        + ", ".join(f'{{name = "c{i}", node_id = "ns=2;i={i}"}}' for i in range(4))
        + "]\n"
    )
    r = run_cli("config", "validate", str(cfg))
    assert r.returncode == 2
    assert "streams[0].source" in r.stderr
    assert "password_file" in r.stderr
    assert SECRET_IN_CONFIG not in r.stderr + r.stdout
    out = tmp_path / "u.tgz"
    r = run_cli("support-bundle", "--config", str(cfg), "--out", str(out), "--journal-lines", "0")
    assert r.returncode == 0, r.stderr
    members = _members(out)
    assert all(SECRET_IN_CONFIG.encode() not in d for d in members.values())
    url = json.loads(members["config.json"])["parsed"]["streams"][0]["source"]["url"]
    assert url == "opc.tcp://operator:<redacted>@10.0.0.30:4840/"


def test_bad_usage_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path, tmp_path / "state")
    for args in (
        ("--journal-lines", "-1"),
        ("--journal-lines", "5001"),
        ("--out", str(tmp_path)),  # a directory
        ("--config", str(tmp_path / "absent.toml")),
    ):
        r = run_cli("support-bundle", "--config", str(cfg), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip(), args
    assert not list(tmp_path.glob("*.tar.gz"))


def test_members_are_cut_from_the_oldest_line() -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(1000))
    cut, was_cut = _cut_oldest(data, 100)
    assert was_cut
    assert len(cut) <= 100
    assert cut.endswith(b"line 999\n")
    assert cut.startswith(b"line ")  # whole lines only
    assert len(cut.splitlines()) == cut.count(b"\n")
    assert _cut_oldest(b"short\n", 100) == (b"short\n", False)
