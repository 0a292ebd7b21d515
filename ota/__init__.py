"""Signed OTA model bundles, shared by the operator tool `edge-ota` and the device.

Roles (after python-tuf): a metadata model (`manifest`, `root`), a pure verification
core (`verify`), bundle files and safe unpacking (`bundle`, `unpack`), and fetchers
(`fetch`). Heavy modules are not imported here; import what you need.
"""

__all__: list[str] = []
