"""`edge-agent config validate` checks the OPC UA certificate and key files a config
names, as it does the MQTT ones: a missing key was 'OK' and the stream then waited
forever at run time."""

from __future__ import annotations

from pathlib import Path

from tests.agentutil import run_cli


def test_missing_certificate_files_are_named_by_key(tmp_path: Path) -> None:
    present = tmp_path / "client.der"
    present.write_bytes(b"0")
    channels = ", ".join(f'{{name = "c{i}", node_id = "ns=2;i={i}"}}' for i in range(4))
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
device_id = "gw-ua"
[mqtt]
enabled = false
[[streams]]
name = "press"
model = "vibration-ae"
[streams.source]
kind = "opcua"
url = "opc.tcp://10.0.0.30:4840/"
security_policy = "Basic256Sha256"
certificate = "{present}"
private_key = "{tmp_path / "absent.key.pem"}"
server_certificate = "{tmp_path / "absent-plc.der"}"
channels = [{channels}]
"""
    )
    r = run_cli("config", "validate", str(cfg))
    assert r.returncode == 2, r.stdout
    assert "streams[0].source.private_key: " in r.stderr
    assert "absent.key.pem: no such file" in r.stderr
    assert "streams[0].source.server_certificate: " in r.stderr
    assert "streams[0].source.certificate:" not in r.stderr
    assert "Traceback" not in r.stderr
