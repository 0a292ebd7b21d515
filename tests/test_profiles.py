import pytest

from edge_agent.errors import ConfigError
from edge_agent.profiles import DeviceFacts, detect, load_profiles, read_facts, select

PROFILES = load_profiles()


@pytest.mark.parametrize(
    ("facts", "name", "why"),
    [
        (DeviceFacts("Raspberry Pi 4 Model B Rev 1.4", "", "aarch64", 4), "rpi4", "device-tree"),
        (DeviceFacts("Raspberry Pi 5 Model B Rev 1.0", "", "aarch64", 4), "rpi5", "device-tree"),
        (DeviceFacts("Raspberry Pi Zero 2 W Rev 1.0", "", "aarch64", 4), "rpi-zero2w", "Zero"),
        (
            DeviceFacts("NVIDIA Jetson Orin Nano Developer Kit", "# R36", "aarch64", 6),
            "jetson-orin-nano",
            "Orin",
        ),
        (
            DeviceFacts("", "# R36 (release), REVISION: 3.0", "aarch64", 6),
            "jetson-orin-nano",
            "tegra",
        ),
        (DeviceFacts("", "", "x86_64", 8), "x86-generic", "x86_64"),
        (DeviceFacts("Some Other Board", "", "aarch64", 4), "arm64-generic", "no specific"),
    ],
)
def test_detection_and_its_reason(facts, name, why):
    sel = detect(facts, PROFILES)
    assert sel.profile.name == name
    assert why in sel.reason


def test_every_required_profile_exists_with_budgets():
    for name in ("rpi4", "rpi5", "rpi-zero2w", "jetson-orin-nano", "x86-generic"):
        p = PROFILES[name]
        assert p.threads >= 1
        assert p.model_memory_mb > 0
        assert p.window_latency_ms > 0
    jet = PROFILES["jetson-orin-nano"].onnx_providers
    assert jet[0] == "TensorrtExecutionProvider"
    assert jet[-1] == "CPUExecutionProvider"


def test_unknown_profile_name_is_refused():
    with pytest.raises(ConfigError, match="unknown profile 'rpi9'"):
        select("rpi9", PROFILES)


def test_read_facts_from_a_fake_root(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi 4 Model B\x00")
    f = read_facts(tmp_path)
    assert f.device_tree_model == "Raspberry Pi 4 Model B"
    assert select("auto", PROFILES, f).profile.name == "rpi4"
