"""A pretend PLC with an OPC UA server: asyncua's own Server on a free loopback port, in
a thread with its own event loop.

Variables live under Objects/Press (namespace `urn:edge-agent:test`, index 2) with
string node ids `ns=2;s=<name>`. The test writes values (`write`), deletes a variable
and adds it back (`delete`, `add`), stops and restarts the server on the same port, and
can require security (Basic256Sha256, Sign and SignAndEncrypt) with certificates made
by `make_certificates`.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["Certificates", "OpcUaServer", "free_port", "make_certificates"]

NS_URI = "urn:edge-agent:test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Certificates:
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_cert: Path  # a certificate the server does not hold: pinning it must fail


def _make_pair(directory: Path, name: str, uri: str, usage: x509.ObjectIdentifier) -> Path:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {"organizationName": "edge-agent tests"},
        [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        [usage],
    )
    (directory / f"{name}.key.pem").write_bytes(cert_gen.dump_private_key_as_pem(key))
    path = directory / f"{name}.cert.der"
    path.write_bytes(cert.public_bytes(Encoding.DER))
    return path


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    srv = _make_pair(
        directory, "server", "urn:edge-agent:test-server", ExtendedKeyUsageOID.SERVER_AUTH
    )
    cli = _make_pair(directory, "client", "urn:edge-agent:gw-test", ExtendedKeyUsageOID.CLIENT_AUTH)
    other = _make_pair(directory, "other", "urn:edge-agent:other", ExtendedKeyUsageOID.SERVER_AUTH)
    return Certificates(srv, directory / "server.key.pem", cli, directory / "client.key.pem", other)


class OpcUaServer:
    def __init__(
        self,
        variables: dict[str, float],
        *,
        port: int | None = None,
        certificates: Certificates | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/edge/"
        self._port_free_to_change = port is None  # ours, and not started yet
        self.initial = dict(variables)
        self.certificates = certificates
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._stopped: asyncio.Event | None = None
        self._vars: dict[str, Any] = {}
        self._press: Any = None
        self.idx = 2

    def start(self) -> None:
        """Serve (again on the same port after a stop). A free port picked by us can be
        taken before the server binds it (another test's server, or any connection's
        ephemeral source port): the first start then picks another, a few times."""
        for _ in range(4):
            try:
                self._start_once()
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE or not self._port_free_to_change:
                    raise
                self.port = free_port()
                self.url = f"opc.tcp://127.0.0.1:{self.port}/edge/"
        else:
            self._start_once()
        self._port_free_to_change = False  # a restart must come back where it was

    def _start_once(self) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            async def main() -> None:
                try:
                    await self._start()
                except BaseException as e:  # noqa: BLE001 - raised by start() in the caller's thread
                    errors.append(e)
                    ready.set()
                    return
                ready.set()
                assert self._stopped is not None
                await self._stopped.wait()
                await self._server.stop()

            asyncio.run(main())

        self._thread = threading.Thread(target=serve, name="opcua-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("OPC UA test server did not start")
        if errors:
            raise errors[0]

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("edge-agent test PLC")
        if self.certificates is not None:
            await server.load_certificate(str(self.certificates.server_cert))
            await server.load_private_key(str(self.certificates.server_key))
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                ]
            )
        self.idx = await server.register_namespace(NS_URI)
        self._press = await server.nodes.objects.add_object(
            ua.NodeId("Press", self.idx), f"{self.idx}:Press"
        )
        for name, value in self.initial.items():
            await self._add(name, value)
        await server.start()
        self._server = server

    async def _add(self, name: str, value: float) -> None:
        var = await self._press.add_variable(
            ua.NodeId(name, self.idx),
            f"{self.idx}:{name}",
            ua.Variant(value, ua.VariantType.Double),
        )
        self._vars[name] = var

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def write(self, values: dict[str, float], ts: float | None = None) -> None:
        """Write values, stamped with source time `ts` (default: now)."""

        async def go() -> None:
            stamp = datetime.datetime.fromtimestamp(ts or time.time(), datetime.timezone.utc)
            for name, v in values.items():
                dv = ua.DataValue(
                    ua.Variant(float(v), ua.VariantType.Double), SourceTimestamp=stamp,
                    ServerTimestamp=stamp,
                )  # fmt: skip
                await self._server.write_attribute_value(self._vars[name].nodeid, dv)

        self._run(go())

    def delete(self, name: str) -> None:
        async def go() -> None:
            await self._server.delete_nodes([self._vars.pop(name)])

        self._run(go())

    def add(self, name: str, value: float) -> None:
        self._run(self._add(name, value))

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(15)
        self._loop = self._thread = None
        self._vars.clear()
