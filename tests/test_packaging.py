"""The systemd unit, the default config and the Debian package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packaging"
UNIT = PKG / "edge-agent.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: sections, repeatable keys, comments, no continuation lines here."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        assert section is not None, raw
        assert not line.endswith("\\"), "continuation lines are not used in our unit"
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (key, values)
    return values[0]


def test_unit_key_settings() -> None:
    u = parse_unit(UNIT.read_text())
    s = "Service"
    assert one(u, s, "Type") == "notify"
    assert one(u, s, "ExecStart") == "/usr/bin/edge-agent run --config /etc/edge-agent/agent.toml"
    assert int(one(u, s, "WatchdogSec")) >= 3 * 10  # >= 3x the default stall_after_s
    assert one(u, s, "Restart") == "on-failure"
    assert int(one(u, "Unit", "StartLimitBurst")) >= 1
    assert int(one(u, "Unit", "StartLimitIntervalSec")) > 0
    assert one(u, s, "StateDirectory") == "edge-agent"
    assert one(u, s, "ConfigurationDirectory") == "edge-agent"
    assert one(u, s, "LoadCredential") == "mqtt-password:/etc/edge-agent/mqtt-password"
    assert one(u, s, "User") == "edge-agent"
    assert set(one(u, s, "SupplementaryGroups").split()) == {"dialout", "video"}
    assert one(u, s, "ProtectSystem") == "strict"
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "ProtectKernelTunables"):
        assert one(u, s, key) == "yes", key
    assert set(one(u, s, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # Serial adapters and cameras must stay reachable across USB re-enumeration.
    assert "PrivateDevices" not in u[s]
    assert "DevicePolicy" not in u[s]
    assert one(u, "Install", "WantedBy") == "multi-user.target"


def _systemd_analyze_usable() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return "systemd-analyze not installed"
    probe = subprocess.run(
        [exe, "verify", "/dev/null/none.service"], capture_output=True, text=True, check=False
    )
    if "Failed to" in probe.stderr and "none.service" not in probe.stderr:
        return f"systemd-analyze does not work here: {probe.stderr.strip()[:200]}"
    return ""


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    why = _systemd_analyze_usable()
    if why:
        pytest.skip(why)
    # verify checks that ExecStart's binary exists; stand in an executable for the one
    # the .deb installs, change nothing else.
    fake = tmp_path / "edge-agent"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/edge-agent ", f"{fake} "))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    # verify only warns (exit 0) about unknown keys and bad values: warnings are failures.
    problems = [x for x in r.stderr.splitlines() if "edge-agent.service" in x]
    assert not problems, problems


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo in the unit is reported."""
    why = _systemd_analyze_usable()
    if why:
        pytest.skip(why)
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert "notifyy" in r.stderr


def test_default_config_validates() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "config", "validate", str(PKG / "agent.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_sysusers_creates_the_user_in_device_groups() -> None:
    lines = [
        x.split()
        for x in (PKG / "edge-agent.sysusers").read_text().splitlines()
        if x and not x.startswith("#")
    ]
    assert lines[0][:2] == ["u", "edge-agent"]
    assert ["m", "edge-agent", "dialout"] in lines
    assert ["m", "edge-agent", "video"] in lines


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_deb_builds_and_holds_agent_unit_config_and_command(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(PKG / "build-deb.sh"), "--no-deps", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    deb = Path(r.stdout.strip().splitlines()[-1])
    assert deb.name == "edge-agent_0.1.0_all.deb"

    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True)
    fields = dict(line.strip().split(": ", 1) for line in info.stdout.splitlines() if ": " in line)
    assert fields["Package"] == "edge-agent"
    assert fields["Version"] == "0.1.0"
    assert fields["Architecture"] == "all"
    assert "python3 (>= 3.10)" in fields["Depends"]
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert script in info.stdout

    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    entries = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
    assert entries["./usr/bin/edge-agent"] == "-rwxr-xr-x"
    assert entries["./usr/bin/edge-ota"] == "-rwxr-xr-x"
    assert "./usr/lib/systemd/system/edge-agent.service" in entries
    assert "./usr/lib/sysusers.d/edge-agent.conf" in entries
    assert "./etc/edge-agent/agent.toml" in entries
    assert "./opt/edge-agent/lib/edge_agent/cli.py" in entries
    assert any(p.startswith("./opt/edge-agent/lib/ota/") for p in entries)
    assert not any("__pycache__" in p for p in entries)
    assert all(" root/root " in line for line in listing.splitlines())

    # The packaged code runs: extract and call the launcher's module the same way.
    x = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
    assert (x / "usr/lib/systemd/system/edge-agent.service").read_bytes() == UNIT.read_bytes()
    launcher = (x / "usr/bin/edge-agent").read_text()
    assert "exec /usr/bin/python3 -s -m edge_agent" in launcher
    env = {**os.environ, "PYTHONPATH": str(x / "opt/edge-agent/lib")}
    r = subprocess.run(
        [sys.executable, "-s", "-m", "edge_agent", "config", "validate",
         str(x / "etc/edge-agent/agent.toml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-s", "-m", "edge_agent", "status", "--state-dir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 3
    assert "never ran here" in r.stdout


@pytest.mark.slow
def test_wheel_carries_bundled_models_and_profiles(tmp_path: Path) -> None:
    """A plain `pip install` (not editable, not the .deb) must still find the demo model
    and the device profiles: they go to <prefix>/share/edge-agent."""
    import zipfile

    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (whl,) = tmp_path.glob("factory_edge_agent-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    share = f"factory_edge_agent-{whl.name.split('-')[1]}.data/data/share/edge-agent/"
    for prof in ("rpi4", "rpi5", "rpi-zero2w", "jetson-orin-nano", "x86-generic"):
        assert f"{share}device_profiles/{prof}.toml" in names
    for variant in ("fp32-onnx", "int8-onnx"):
        assert f"{share}models/vibration-ae-{variant}/model.json" in names
        assert f"{share}models/vibration-ae-{variant}/model.onnx" in names


def test_unit_pulls_in_time_sync_as_well_as_ordering_after_it() -> None:
    """time-sync.target is passive: After= alone waits for nothing unless it is wanted."""
    u = parse_unit(UNIT.read_text())
    wants = " ".join(u["Unit"]["Wants"]).split()
    after = " ".join(u["Unit"]["After"]).split()
    assert "time-sync.target" in wants
    assert "time-sync.target" in after
    assert "network-online.target" in wants
    assert "network-online.target" in after


def _project() -> dict[str, Any]:
    import tomllib

    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def test_distribution_name_is_ours_and_commands_are_kept() -> None:
    """`edge-agent` on the package index is an unrelated project importing as edge_agent."""
    project = _project()
    assert project["name"] == "factory-edge-agent"
    assert project["scripts"] == {"edge-agent": "edge_agent.cli:main", "edge-ota": "ota.cli:main"}


def test_no_doc_or_message_sends_users_to_the_index_edge_agent() -> None:
    """`pip install edge-agent...` (any quoting, any extras) installs someone else's code."""
    import re

    bad = re.compile(r"pip3? install\s+(-\S+\s+)*['\"]?edge-agent\b(?!/)")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    files += [*(ROOT / "edge_agent").rglob("*.py"), *(ROOT / "ota").rglob("*.py")]
    hits = [
        f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
        for f in files
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if bad.search(line)
    ]
    assert not hits, hits
    assert bad.search("pip install 'edge-agent[tflite]'")  # the pattern does catch it
    assert bad.search("pip install -U edge-agent")
    assert not bad.search("pip install factory-edge-agent")


def test_constraints_pin_what_this_venv_runs() -> None:
    """constraints.txt is what bootstrap, CI and the .deb install: it must be the tested set."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts/lock-constraints"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = (ROOT / "constraints.txt").read_text()
    for dist in ("numpy", "onnxruntime", "ai-edge-litert", "paho-mqtt", "tuf", "cryptography"):
        assert f"\n{dist}==" in text, dist
    # bootstrap installs with it; CI runs bootstrap; the .deb build passes it to pip.
    assert "-c constraints.txt" in (ROOT / "scripts/bootstrap").read_text()
    assert "scripts/bootstrap dev" in (ROOT / ".ci/run").read_text()
    assert '-c "$root/constraints.txt"' in (PKG / "build-deb.sh").read_text()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_deb_for_32bit_arm_is_refused_with_the_reason(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(PKG / "build-deb.sh"), "--arch", "armhf", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "no 32-bit ARM wheels" in r.stderr
    assert not list(tmp_path.iterdir())


def _fake_deb(tmp_path: Path, arch: str, elf: Path) -> Path:
    stage = tmp_path / "stage"
    (stage / "DEBIAN").mkdir(parents=True)
    lib = stage / "opt/edge-agent/lib/native"
    lib.mkdir(parents=True)
    shutil.copy(elf, lib / "_native.so")
    (stage / "DEBIAN/control").write_text(
        f"Package: edge-agent\nVersion: 0.0.1\nArchitecture: {arch}\n"
        "Maintainer: t <t@localhost>\nDescription: test\n"
    )
    deb = tmp_path / f"fake_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(stage), str(deb)],
        capture_output=True, check=True,
    )  # fmt: skip
    return deb


@pytest.mark.skipif(
    shutil.which("dpkg-deb") is None or shutil.which("file") is None,
    reason="dpkg-deb or file not installed",
)
def test_inspect_deb_flags_a_compiled_file_of_another_architecture(tmp_path: Path) -> None:
    """The architecture check can fail: this machine's python3 binary in an arm64 package."""
    host_elf = Path(os.path.realpath(sys.executable))
    desc = subprocess.run(["file", "-b", str(host_elf)], capture_output=True, text=True, check=True)
    if "ARM aarch64" in desc.stdout:
        pytest.skip("this machine is aarch64 itself")
    r = subprocess.run(
        [str(PKG / "inspect-deb.sh"), str(_fake_deb(tmp_path, "arm64", host_elf))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout
    assert "WRONG  opt/edge-agent/lib/native/_native.so" in r.stdout
    assert "1 ELF files, 1 not arm64" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("EDGE_AGENT_DEB_CROSS") != "1",
    reason="downloads ~60 MB of arm64 wheels and takes minutes: set EDGE_AGENT_DEB_CROSS=1",
)
def test_arm64_deb_cross_built_here_holds_arm64_code_and_litert(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(PKG / "build-deb.sh"), "--arch", "arm64", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    deb = Path(r.stdout.strip().splitlines()[-1])
    assert deb.name == "edge-agent_0.1.0_arm64.deb"
    r = subprocess.run(
        [str(PKG / "inspect-deb.sh"), str(deb), "--require-litert"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Architecture: arm64" in r.stdout
    assert "LiteRT: present" in r.stdout
    assert " 0 not arm64" in r.stdout
    for lib in ("onnxruntime", "numpy", "ai_edge_litert", "paho", "tuf", "cryptography"):
        assert re.search(rf"(^|\s){lib}(\s|$)", r.stdout, re.MULTILINE), lib
    # The pinned versions went in, not whatever the index serves today.
    pins = (ROOT / "constraints.txt").read_text()
    for dist in ("onnxruntime", "numpy", "ai_edge_litert"):
        version = re.search(rf"\n{dist.replace('_', '-')}==([^;]+);", pins)
        assert version, dist
        assert f"{dist}-{version[1]}.dist-info" in r.stdout, dist
