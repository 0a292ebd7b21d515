"""An announced file the server delivers exactly as announced (size and sha256) but that
is not a usable bundle of its signed manifest cannot get better by fetching it again: that
announcement is not retried, and no retry of it can later be taken for the outcome of the
operator's real announcement (the shared case ota-wedge). A file whose bytes differ from
the announced ones stays a transient failure. Nothing here may block the signed target:
the real announcement of the same target installs. Real signed bundles, a real updater on
a real slot store, a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import NOW, Env
from craft import hostile_copy
from otamodels import copy_model
from rig import Rig, announce, make_bundle, make_rig, ota_config

from edge_agent.updates.slots import Phase
from ota.announce import Announcement
from ota.bundle import read_header

NOT_RETRIED = "not retried: the announced file itself is malformed (a new announcement is needed)"


@dataclass
class Files:
    """What the loopback server serves (path -> bytes; others are 404) and every GET."""

    base: str = ""
    served: dict[str, bytes] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def count(self, name: str) -> int:
        return self.gets.count(f"/{name}")


@pytest.fixture
def files() -> Iterator[Files]:
    f = Files()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            f.gets.append(self.path)
            body = f.served.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)  # whole file: the fetcher restarts from 0
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), Handler)
    f.base = f"http://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield f
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def rig(env: Env) -> Iterator[Rig]:
    with make_rig(env) as r:
        yield r


def wrapped(real: Path, url: str, file: Path) -> bytes:
    """The operator's signed manifest and signatures (public) around someone's URL, with
    the size and sha256 of `file`."""
    h = read_header(real)
    data = file.read_bytes()
    return Announcement(
        manifest=json.loads(h.manifest_bytes),
        signatures=h.signatures,
        url=url,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        ts=NOW,
    ).to_payload()


def until(cond: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("kind", ["nested", "pax"])
def test_malformed_file_delivered_exactly_as_announced_is_not_retried(
    rig: Rig, files: Files, kind: str
) -> None:
    real = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.b")
    bad = hostile_copy(real, rig.env.tmp / f"{kind}.b", kind)
    files.served = {"bad.b": bad.read_bytes(), "v2.b": real.read_bytes()}
    rig.updater.ota = ota_config(rig.env, retry_min_s=0.05, retry_max_s=0.1)
    hostile = wrapped(real, files.url("bad.b"), bad)  # the sha256 of the bytes served
    assert rig.updater.process(hostile) == "failed"
    detail = rig.published[-1]["detail"]
    assert "BundleFormatError" in detail, detail
    assert detail.endswith(NOT_RETRIED), detail
    assert rig.updater.snapshot()["retry"] is None
    assert rig.updater.snapshot()["last_result"].startswith("failed v2: BundleFormatError")
    assert rig.updater.store.state.phase is Phase.IDLE  # nothing claimed
    # The same wrapper again (a retained announcement after a reconnect): not fetched.
    n = len(rig.published)
    assert rig.updater.process(hostile) == "ignored"
    assert files.count("bad.b") == 1
    assert [p["state"] for p in rig.published[n:]] == ["announced"]
    # The signed target is not blocked: the operator's real announcement installs.
    assert rig.updater.process(announce(real, files.url("v2.b"))) == "committed"
    assert rig.pipeline.model.card.version == 2


def test_file_whose_bytes_differ_from_the_announced_ones_is_still_retried(
    rig: Rig, files: Files
) -> None:
    real = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.b")
    bad = hostile_copy(real, rig.env.tmp / "pax.b", "pax")
    files.served = {"bad.b": bad.read_bytes(), "v2.b": real.read_bytes()}
    rig.updater.ota = ota_config(rig.env, retry_min_s=60.0, retry_max_s=60.0)
    # The real bundle's sha256 and size around a URL serving other bytes: a hash mismatch
    # the server may yet correct, so it is tried again.
    mismatch = wrapped(real, files.url("bad.b"), real)
    assert rig.updater.process(mismatch) == "failed"
    detail = rig.published[-1]["detail"]
    assert "trying again in 60 s (failure 1)" in detail, detail
    assert NOT_RETRIED not in detail
    assert rig.updater.snapshot()["retry"]["version"] == 2
    # Announced again: fetched again (nothing was remembered about it).
    assert rig.updater.process(mismatch) == "failed"
    assert files.count("bad.b") == 2
    assert "(failure 2)" in rig.published[-1]["detail"]
    assert rig.updater.process(announce(real, files.url("v2.b"))) == "committed"
    assert rig.updater.snapshot()["retry"] is None


def test_waiting_announcement_goes_before_a_due_retry_of_an_older_one(
    rig: Rig, files: Files
) -> None:
    real = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.b")
    files.served = {"v2.b": real.read_bytes()}
    rig.updater.ota = ota_config(rig.env, retry_min_s=0.01, retry_max_s=0.01)
    assert rig.updater.process(announce(real, files.url("gone.b"))) == "failed"  # 404
    assert until(lambda: rig.updater.snapshot()["retry"]["in_s"] == 0)
    time.sleep(0.1)  # in_s is rounded to 0.1 s: now the retry is surely due
    n = len(rig.published)
    rig.updater.on_announcement(announce(real, files.url("v2.b")))  # waits in the inbox
    rig.updater.start()
    assert until(lambda: rig.updater.store.state.phase is Phase.COMMITTED), rig.published[-3:]
    after = rig.published[n:]
    assert after[0]["state"] == "announced"
    assert files.url("v2.b") in after[0]["detail"]  # the newer one first
    assert "failed" not in [p["state"] for p in after]
    assert files.count("gone.b") == 1  # the replaced retry never ran
    assert rig.updater.snapshot()["retry"] is None


def test_real_file_announced_under_another_signed_manifest_does_not_block_its_own(
    rig: Rig, files: Files
) -> None:
    """Poisoning: the operator's public v2 manifest around the URL and sha256 of the real
    v3 bundle. The exact bytes are refused for v2 (not v2's file) and not retried, but the
    operator's v3 announcement with that same URL and sha256 is fetched and installs: the
    memory is of the wrapper around one signed target, never of the URL or hash alone."""
    v2 = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.b")
    v3 = make_bundle(rig.env, copy_model(rig.env.tmp / "v3", 3), "v3.b")
    files.served = {"v3.b": v3.read_bytes()}
    assert rig.updater.process(wrapped(v2, files.url("v3.b"), v3)) == "failed"
    detail = rig.published[-1]["detail"]
    assert "is not vibration-ae-fp32-onnx v2" in detail, detail
    assert detail.endswith(NOT_RETRIED), detail
    assert rig.updater.process(announce(v3, files.url("v3.b"))) == "committed"
    assert files.count("v3.b") == 2
    assert rig.pipeline.model.card.version == 3
