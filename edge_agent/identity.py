"""The default device_id: the host name, made unique per machine when it is not.

Gateways are often installed from one image, and every fresh Raspberry Pi is called
`raspberrypi`: two of them with the host name as device_id would share one MQTT client
id and knock each other off the broker. When the host name is a distribution default,
the default id appends the first 8 hex digits of /etc/machine-id (unique per install,
stable across reboots): `raspberrypi-3d1219c7`.

`default_device_id` is pure; `machine_default_device_id` reads the host.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

__all__ = [
    "GENERIC_HOSTNAMES",
    "MACHINE_ID_FILES",
    "default_device_id",
    "is_generic_hostname",
    "machine_default_device_id",
]

# Host names that images ship with; a device named like this is not named at all.
GENERIC_HOSTNAMES = frozenset(
    {
        "",
        "localhost",
        "raspberrypi",
        "ubuntu",
        "debian",
        "dietpi",
        "armbian",
        "orangepi",
        "beaglebone",
        "rockpi",
        "radxa",
        "linux",
        "tegra-ubuntu",
    }
)
# Prefixes of generated defaults (NVIDIA's `jetson-desktop`, `jetson-nano`, ...).
_GENERIC_PREFIXES = ("jetson", "localhost")
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_HEX = re.compile(r"[0-9a-f]{8,}")


def is_generic_hostname(hostname: str) -> bool:
    """True for a distribution's default name (case and domain ignored)."""
    short = hostname.strip().lower().split(".", 1)[0]
    return short in GENERIC_HOSTNAMES or short.startswith(_GENERIC_PREFIXES)


def default_device_id(hostname: str, machine_id: str | None) -> str:
    """`hostname`, or `<hostname>-<first 8 hex of machine_id>` when the host name is a
    distribution default (`device` when it is empty). Without a usable machine id
    the host name is all there is."""
    name = hostname.strip().split(".", 1)[0] or "device"
    # MQTT topic levels must not carry these (config validation refuses them)
    name = re.sub(r"[/+#\s]", "-", name)
    if not is_generic_hostname(hostname):
        return name
    mid = (machine_id or "").strip().lower()
    if not _HEX.fullmatch(mid):
        return name
    return f"{name}-{mid[:8]}"


def _read_machine_id() -> str | None:
    for p in MACHINE_ID_FILES:
        try:
            text = p.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            return text
    return None


def machine_default_device_id() -> str:
    """The default device_id of this machine (see the module docstring)."""
    return default_device_id(socket.gethostname(), _read_machine_id())
