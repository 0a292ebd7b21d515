"""A real mosquitto for tests: free loopback port, config in a temp dir, start/stop/restart.

Also makes TLS material (a CA, a server and a client certificate, with `cryptography`)
and password files (with `mosquitto_passwd -b`).
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
START_TIMEOUT_S = 10.0


def mosquitto_available() -> bool:
    return Path(MOSQUITTO).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing the broker uses


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def make_tls_files(d: Path) -> TlsFiles:
    d.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> Path:
        p = d / name
        p.write_bytes(data)
        return p

    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("localhost", srv_key, ca.subject, ca_key, ca=False, server=True)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("gw-01", cli_key, ca.subject, ca_key, ca=False)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("other-ca", other_key, None, other_key, ca=True)
    return TlsFiles(
        ca=write("ca.pem", ca.public_bytes(pem)),
        server_cert=write("server.pem", srv.public_bytes(pem)),
        server_key=write("server.key", _key_pem(srv_key)),
        client_cert=write("client.pem", cli.public_bytes(pem)),
        client_key=write("client.key", _key_pem(cli_key)),
        other_ca=write("other-ca.pem", other.public_bytes(pem)),
    )


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file made by the real `mosquitto_passwd -b`."""
    if MOSQUITTO_PASSWD is None:
        raise RuntimeError("mosquitto_passwd not found")
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for user, pw in users.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), user, pw], check=True, timeout=10)
    return path


class Broker:
    """One mosquitto process with its own config, port and persistence dir."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: TlsFiles | None = None,
        require_client_cert: bool = False,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Started as root (CI containers) mosquitto would switch to user "mosquitto"
            # and then could not write its persistence db or log in our temp dir.
            f"user {getpass.getuser()}",
            f"allow_anonymous {'false' if password_file else 'true'}",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_type all",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
        ]
        if tls is not None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                f"require_certificate {'true' if require_client_cert else 'false'}",
            ]
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
        lines += extra  # more mosquitto.conf lines, e.g. "max_packet_size 200"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        assert self._proc is None, "already running"
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err} {self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence db, as on a service restart."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
