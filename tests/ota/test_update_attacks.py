"""Attacks on the device's update flow through the announcement wrapper (what an MQTT
publisher controls: URL, announced size and hash, and the unsigned parts of a bundle).
Each asserts the specific refusal AND that the serving slot's files are byte-identical.
Real signed bundles of the real model, a real slot store and a real pipeline."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import socketserver
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import NOW, Env
from craft import hostile_copy
from otamodels import copy_model, nan_model
from rig import PROFILE, Rig, announce, make_bundle, make_rig, ota_config

from edge_agent.errors import StateError
from edge_agent.updates.record import RECORD_FILE
from edge_agent.updates.slots import Phase
from edge_agent.updates.store import SlotStore
from ota.build import plan_bundle
from ota.bundle import add_signatures, read_header, write_bundle
from ota.fetch import FetchLimits
from ota.signing import sign_bytes
from tests.agentutil import run_cli


@pytest.fixture
def rig(env: Env) -> Iterator[Rig]:
    with make_rig(env) as r:
        yield r


def slot_files(rig: Rig) -> dict[str, bytes]:
    """Every file under slots/ (models, cards, stored manifests, signers), by path."""
    root = rig.env.tmp / "state" / "slots"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def commit(rig: Rig, version: int) -> Path:
    b = make_bundle(rig.env, copy_model(rig.env.tmp / f"v{version}", version), f"v{version}.b")
    assert rig.updater.process(announce(b)) == "committed", rig.published[-1]
    return b


def at_rest_on(rig: Rig, version: int) -> None:
    st = rig.updater.store.state
    assert st.phase in {Phase.COMMITTED, Phase.ROLLED_BACK}, st.phase
    assert st.active_version == version
    assert rig.pipeline.model.card.version == version


def test_unsigned_junk_carrying_the_real_hash_cannot_block_the_signed_update(rig: Rig) -> None:
    b2 = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.b")
    junk = json.dumps({
        "v": 1, "ts": "2025-06-01T12:00:00Z", "manifest": {}, "signatures": [],
        "url": "http://127.0.0.1:9/none", "size": 1,
        "sha256": hashlib.sha256(b2.read_bytes()).hexdigest(),
    }).encode()  # fmt: skip
    assert rig.updater.process(junk) == "rejected"
    assert rig.updater.process(junk) == "rejected"  # refused again: nothing was remembered
    assert rig.updater.process(announce(b2)) == "committed"
    record = json.loads((rig.env.tmp / "state" / "ota" / RECORD_FILE).read_text())
    signed = hashlib.sha256(read_header(b2).manifest_bytes).hexdigest()
    assert [(h["id"], h["version"]) for h in record["handled"]] == [(signed, 2)]
    assert record["attempts"] == {}
    # The same signed target, re-announced (retained) with any wrapper, is handled.
    assert rig.updater.process(announce(b2, url="http://127.0.0.1:9/other")) == "ignored"


@pytest.mark.parametrize("kind", ["nested", "pax"])
def test_hostile_unsigned_bundle_parts_are_a_failed_download_not_a_wedge(
    rig: Rig, kind: str
) -> None:
    commit(rig, 2)
    before = slot_files(rig)
    real = make_bundle(rig.env, copy_model(rig.env.tmp / "v3", 3), "v3.b")
    hostile = hostile_copy(real, rig.env.tmp / f"{kind}.b", kind)
    assert rig.updater.process(announce(real, url=hostile.resolve().as_uri())) == "failed"
    detail = rig.published[-1]["detail"]
    assert "BundleFormatError" in detail, detail
    assert "trying again in" in detail
    assert rig.updater.snapshot()["retry"]["version"] == 3
    at_rest_on(rig, 2)  # no slot claimed, nothing wedged
    assert slot_files(rig) == before
    assert not list((rig.env.tmp / "state" / "ota" / "downloads").iterdir())
    # The operator's real announcement of the same signed target goes through at once.
    assert rig.updater.process(announce(real)) == "committed"
    assert rig.updater.snapshot()["retry"] is None
    at_rest_on(rig, 3)


def test_forged_announcement_with_a_dead_url_leaves_the_rollback_slot_untouched(
    rig: Rig,
) -> None:
    commit(rig, 2)
    commit(rig, 3)
    before, prev = slot_files(rig), rig.updater.store.state.previous
    b4 = make_bundle(rig.env, copy_model(rig.env.tmp / "v4", 4), "v4.b")
    assert rig.updater.process(announce(b4, url="http://127.0.0.1:9/v4.b")) == "failed"
    assert "DownloadError" in rig.published[-1]["detail"]
    assert "downloading" in rig.states
    assert slot_files(rig) == before
    assert rig.updater.store.state.previous == prev
    at_rest_on(rig, 3)


def _process_into(rig: Rig, payload: bytes, result: list[str]) -> None:
    result.append(rig.updater.process(payload))


def test_file_urls_from_the_network_reveal_nothing_and_open_nothing(rig: Rig) -> None:
    rig.updater.ota = dataclasses.replace(ota_config(rig.env), local_bundle_dir="")
    commit_dir = rig.env.tmp / "v2"
    b2 = make_bundle(rig.env, copy_model(commit_dir, 2), "v2.b")
    secret = rig.env.tmp / "secret.conf"
    secret.write_bytes(b"x" * 1234)
    fifo = rig.env.tmp / "pipe"
    os.mkfifo(fifo)
    details = []
    for target in (secret, rig.env.tmp / "missing", fifo, b2):
        result: list[str] = []
        payload = announce(b2, target.as_uri())
        t = threading.Thread(target=_process_into, args=(rig, payload, result))
        t.start()
        t.join(30)
        assert not t.is_alive(), f"the updater blocked on {target.name}"
        assert result == ["rejected"]
        details.append(rig.published[-1]["detail"])
    assert len(set(details)) == 1, details  # the same answer whatever the path
    assert "1234" not in details[0]
    assert "No such file" not in details[0]
    assert str(rig.env.tmp) not in details[0]
    assert not (rig.env.tmp / "state" / "slots").exists()


def test_file_url_inside_the_operator_directory_refuses_a_fifo_without_blocking(
    rig: Rig,
) -> None:
    b2 = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.b")
    fifo = rig.env.tmp / "pipe.b"
    os.mkfifo(fifo)
    assert rig.updater.process(announce(b2, fifo.as_uri())) == "failed"
    assert "not a regular file" in rig.published[-1]["detail"]
    assert str(rig.env.tmp) not in rig.published[-1]["detail"]  # local paths masked
    outside = rig.env.tmp.parent / f"{rig.env.tmp.name}-outside.b"
    outside.write_bytes(b2.read_bytes())
    link = rig.env.tmp / "escape.b"
    link.symlink_to(outside)
    try:
        assert rig.updater.process(announce(b2, link.as_uri())) == "failed"
        assert "outside the local bundle directory" in rig.published[-1]["detail"]
    finally:
        outside.unlink()


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Sends the right Content-Length, 1000 bytes, then one byte every 0.5 s."""

    protocol_version = "HTTP/1.1"
    body = b""
    release = threading.Event()

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body[:1000])
            self.wfile.flush()
            i = 1000
            while not self.release.wait(0.5) and i < len(self.body):
                self.wfile.write(self.body[i : i + 1])
                self.wfile.flush()
                i += 1
        except OSError:
            pass


@pytest.fixture
def trickle(env: Env) -> Iterator[tuple[str, type[_Trickle]]]:
    class Handler(_Trickle):
        release = threading.Event()

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.1,), daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v2.b", Handler
    Handler.release.set()
    srv.shutdown()
    srv.server_close()


def _wait(cond: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.02)
    return False


def test_slow_retrieval_is_given_up_and_manual_requests_are_answered_meanwhile(
    env: Env, trickle: tuple[str, type[_Trickle]]
) -> None:
    url, handler = trickle
    limits = FetchLimits(min_rate_bps=5000.0, rate_window_s=2.0, base_s=3.0)
    with make_rig(env, fetch_limits=limits) as rig:
        b2 = make_bundle(env, copy_model(env.tmp / "v2", 2), "v2.b")
        handler.body = b2.read_bytes()
        rig.updater.start()
        rig.updater.on_announcement(announce(b2, url))
        assert _wait(lambda: "downloading" in rig.states, 30)
        answered = threading.Event()
        assert rig.updater.call_between_updates(answered.set)
        assert answered.wait(5), "a manual request waited behind the download"
        assert rig.updater.state == "downloading"
        assert _wait(lambda: "failed" in rig.states, 60)
        failed = next(p for p in rig.published if p["state"] == "failed")
        assert "TransferTooSlowError" in failed["detail"]
        assert "below the minimum" in failed["detail"]
        retry = rig.updater.snapshot()["retry"]
        assert retry is not None
        assert retry["in_s"] > 0
        assert rig.updater.store.state.phase is Phase.IDLE  # nothing was claimed
        assert rig.pipeline.model.card.version == 1


def _signed_with_override(env: Env, model_dir: Path, name: str) -> Path:
    """A validly signed manifest carrying the old `allow_downgrade: true` override."""
    plan = plan_bundle(
        model_dir, profiles=[PROFILE.name], created=NOW - timedelta(hours=1),
        expires=NOW + timedelta(days=90), min_agent_version="0.1.0",
    )  # fmt: skip
    out = env.tmp / name
    write_bundle(out, dataclasses.replace(plan.manifest, allow_downgrade=True), plan.sources)
    add_signatures(out, [sign_bytes(k, read_header(out).manifest_bytes) for k in env.keys[:2]])
    return out


def test_replayed_signed_downgrade_is_refused_and_the_serving_slot_untouched(rig: Rig) -> None:
    """Rollback attack: a signed emergency downgrade (old override field) replayed after a
    newer version was committed, also as a byte-different copy. Going back to old
    weights is a roll forward: a new, higher version carrying them."""
    emergency = _signed_with_override(rig.env, copy_model(rig.env.tmp / "e2", 2), "e2.b")
    commit(rig, 3)
    commit(rig, 4)
    before = slot_files(rig)
    padded = rig.env.tmp / "e2-padded.b"
    padded.write_bytes(emergency.read_bytes() + bytes(1024))
    for b in (emergency, padded):
        assert rig.updater.process(announce(b)) == "rejected"
        assert "RollbackError" in rig.published[-1]["detail"]
        assert "downloading" not in rig.states[-2:]
        assert slot_files(rig) == before
        at_rest_on(rig, 4)
    forward = make_bundle(rig.env, copy_model(rig.env.tmp / "v5-old-weights", 5), "v5.b")
    assert rig.updater.process(announce(forward)) == "committed"
    at_rest_on(rig, 5)


def test_slot_rolled_back_for_cause_is_marked_and_manual_rollback_refuses_it(
    rig: Rig,
) -> None:
    commit(rig, 2)
    b3 = make_bundle(rig.env, nan_model(rig.env.tmp / "nan", 3, above=20.0), "3.b")
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(rig.updater.process(announce(b3))))
    t.start()
    assert _wait(lambda: rig.states.count("promoted") == 2 or not t.is_alive(), 60)
    rig.feeder.gain = 50.0  # a large excursion: v3 outputs NaN during its trial
    t.join(60)
    assert result == ["rolled_back"]
    store = rig.updater.store
    bad = store.state.previous
    assert bad is not None
    assert "rolled back by the agent" in store.state.bad[bad]
    assert rig.updater.snapshot()["bad_slots"] == {bad.value: store.state.bad[bad]}
    state_dir = rig.env.tmp / "state"
    before = slot_files(rig)
    p = run_cli("rollback", "--state-dir", str(state_dir))
    assert p.returncode != 0
    assert "rolled back by the agent" in p.stderr
    assert "--force" in p.stderr
    assert slot_files(rig) == before
    assert SlotStore(state_dir).state.active_version == 2
    with pytest.raises(StateError, match="refusing to serve slot"):
        store.step_back("technician", NOW)
    p = run_cli("rollback", "--state-dir", str(state_dir), "--force")
    assert p.returncode == 0, p.stderr
    assert SlotStore(state_dir).state.active_version == 3
