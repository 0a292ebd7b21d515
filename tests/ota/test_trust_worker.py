"""The updater's trust work in a short-lived child (`edge_agent.updates.trust_worker`):
against real image and director repositories served over real HTTP, the isolated
channel finds, downloads and seals exactly what ngclient in this process does, refuses
the same attacks with the same errors, a cancelled or dead worker is a transient
failure, a worker dies with its agent; the announcement root and manifest checks give
the same results and errors as in-process; and a real agent with a channel or an
announcement root keeps cryptography out of its own process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import NOW, Env
from fleet import REPO, read_status, start_agent, stop_agent, wait_until, write_config
from otamodels import copy_model
from rig import make_bundle
from tufrig import Repos, make_repos

from edge_agent.errors import StateError
from edge_agent.updates.channel import UpdateChannel
from edge_agent.updates.root_file import load_root
from edge_agent.updates.trust_worker import (
    IsolatedChannel,
    WorkerError,
    load_root_isolated,
    verify_isolated,
)
from ota.bundle import read_header
from ota.errors import (
    ChannelStaleError,
    DownloadError,
    ExpiredError,
    HashMismatchError,
    RollbackError,
    ThresholdError,
)
from ota.root import Root, SignedRoot
from ota.verify import verify
from tests.mosquitto import Broker


def _release(env: Env, repos: Repos, version: int) -> str:
    bundle = make_bundle(env, copy_model(env.tmp / f"model-v{version}", version), f"v{version}")
    path = repos.release(bundle)
    repos.direct(path)
    return path


def test_isolated_channel_finds_downloads_and_seals_what_ngclient_here_does(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        _release(env, repos, 2)
        here = UpdateChannel(repos.channel(), env.tmp / "here")
        there = IsolatedChannel(repos.channel(), env.tmp / "there")
        (want,) = here.refresh()
        (got,) = there.refresh()
        assert got.to_dict() == want.to_dict()
        assert there.root_versions == here.root_versions == {"image": 1, "director": 1}
        a = here.download(want, env.tmp / "here.bundle")
        b = there.download(got, env.tmp / "there.bundle")
        assert b.read_bytes() == a.read_bytes()
        assert there.evidence(got) == here.evidence(want)
        # the worker persisted the trusted metadata where the next refresh starts from
        assert (env.tmp / "there" / "ota" / "tuf" / "image" / "timestamp.json").is_file()


def test_arbitrary_software_is_refused_by_the_worker_with_the_same_error(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        path = _release(env, repos, 2)
        served = next((repos.image.path / "targets").rglob(f"*.{path.split('/')[-1]}"))
        evil = bytearray(served.read_bytes())
        evil[-2000] ^= 0xFF
        served.write_bytes(bytes(evil))
        there = IsolatedChannel(repos.channel(), env.tmp / "there")
        (dt,) = there.refresh()
        dest = env.tmp / "there.bundle"
        with pytest.raises(HashMismatchError):
            there.download(dt, dest)
        assert not dest.exists()
        assert not dest.with_name(dest.name + ".part").exists()
        with pytest.raises(DownloadError):  # no evidence for what did not verify
            there.evidence(dt)


def test_indefinite_freeze_is_a_stale_channel_through_the_worker(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        _release(env, repos, 2)
        repos.image.refresh_timestamp(repos.image_online, repos.now - timedelta(days=2))
        with pytest.raises(ChannelStaleError, match=r"^update channel stale since "):
            IsolatedChannel(repos.channel(), env.tmp / "there").refresh()


@pytest.fixture
def silent_server() -> Iterator[tuple[str, socket.socket]]:
    """Accepts connections and never answers: a worker fetching from it waits."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}", srv
    srv.close()
    for c in held:
        c.close()


def test_a_cancelled_worker_is_killed_and_is_a_transient_download_error(
    env: Env, silent_server: tuple[str, socket.socket]
) -> None:
    with make_repos(env.tmp / "repos") as repos:
        _release(env, repos, 2)
        (dt,) = IsolatedChannel(repos.channel(), env.tmp / "s").refresh()
        url, _ = silent_server
        cfg = repos.channel()
        stuck = IsolatedChannel(
            type(cfg)(url, url, cfg.image_root, cfg.director_root, cfg.group, cfg.device),
            env.tmp / "stuck",
        )
        cancel = threading.Event()
        threading.Timer(1.0, cancel.set).start()
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="cancelled") as e:
            stuck.download(dt, env.tmp / "stuck.bundle", cancel)
        assert isinstance(e.value, DownloadError)  # retried with backoff, never a verdict
        assert time.monotonic() - t0 < 30


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # exited (a zombie until its new parent reaps it)


def test_a_worker_dies_with_its_agent(env: Env, silent_server: tuple[str, socket.socket]) -> None:
    url, _ = silent_server
    root = env.tmp / "root.json"
    root.write_text("{}")
    code = (
        "from pathlib import Path\n"
        "from edge_agent.updates.channel_types import ChannelConfig\n"
        "from edge_agent.updates.trust_worker import IsolatedChannel\n"
        f"cfg = ChannelConfig({url!r}, {url!r}, Path({str(root)!r}), Path({str(root)!r}), "
        "'g', 'd')\n"
        f"IsolatedChannel(cfg, Path({str(env.tmp / 'st')!r})).refresh()\n"
    )
    agent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (kids := _children(agent.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kids, "the stand-in agent started no worker"
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
        wait_until(lambda: all(_gone(k) for k in kids), 30, "the worker to die with its agent")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)


@pytest.mark.broker
def test_agent_with_a_channel_refreshes_without_cryptography_in_its_process(
    env: Env, broker: Broker
) -> None:
    with make_repos(env.tmp / "repos") as repos:
        _release(env, repos, 2)
        ch = repos.channel(group="nobody-directed")
        extra = "\n".join([
            f'image_url = "{ch.image_url}"',
            f'director_url = "{ch.director_url}"',
            f'image_root_file = "{ch.image_root}"',
            f'director_root_file = "{ch.director_root}"',
        ])  # fmt: skip
        cfg = write_config(env.tmp, "gw-lean", broker.port, None, extra_ota=extra)
        cfg.write_text(cfg.read_text().replace('group = "line-1"', 'group = "nobody-directed"'))
        state = env.tmp / "gw-lean"
        agent = start_agent(cfg)
        try:
            wait_until(
                lambda: (
                    ((read_status(state).get("ota") or {}).get("channel") or {}).get(
                        "trusted_root_versions"
                    )
                    == {"image": 1, "director": 1}
                ),
                60,
                "a channel refresh",
                agent,
            )
            maps = Path(f"/proc/{agent.pid}/maps").read_text()
            assert "/cryptography/" not in maps
            assert not [k for k in _children(agent.pid) if not _gone(k)]  # the worker exited
        finally:
            out = stop_agent(agent)
        assert "Traceback" not in out, out


def _root_file(env: Env, path: Path, expires: datetime, signers: int = 2) -> Root:
    root = Root(version=1, expires=expires, threshold=2, keys=env.root.keys)
    doc = SignedRoot(root)
    for k in env.keys[:signers]:
        doc = doc.sign(k)
    path.write_bytes(doc.to_bytes())
    return root


def test_announcement_root_and_manifest_checks_in_the_worker_match_in_process(
    env: Env,
) -> None:
    rf = env.tmp / "root.json"
    _root_file(env, rf, NOW + timedelta(days=365))
    here, there = load_root(rf, NOW), load_root_isolated(rf, NOW)
    assert there.to_dict() == here.to_dict()
    header = read_header(make_bundle(env, copy_model(env.tmp / "m2", 2), "v2.b"))
    args = (header.manifest_bytes, header.signatures, here, 1, "rpi5", NOW)
    want = verify(*args, agent_version="0.1.0")
    got = verify_isolated(*args, agent_version="0.1.0")
    assert got == want
    # the same refusals, by class: one signature under a threshold of two, a downgrade,
    # an expired root, an unreadable root file
    with pytest.raises(ThresholdError):
        verify_isolated(header.manifest_bytes, header.signatures[:1], here, 1, "rpi5", NOW)
    with pytest.raises(RollbackError):
        verify_isolated(header.manifest_bytes, header.signatures, here, 2, "rpi5", NOW)
    with pytest.raises(ExpiredError):
        load_root_isolated(rf, NOW + timedelta(days=400))
    with pytest.raises(StateError, match="cannot read"):
        load_root_isolated(env.tmp / "missing.json", NOW)


@pytest.mark.broker
def test_agent_with_an_announcement_root_keeps_cryptography_out_of_its_process(
    env: Env, broker: Broker
) -> None:
    rf = env.tmp / "root.json"
    _root_file(env, rf, datetime.now(timezone.utc) + timedelta(days=365))
    cfg = write_config(env.tmp, "gw-ann", broker.port, rf)
    state = env.tmp / "gw-ann"
    agent = start_agent(cfg)
    try:
        wait_until(
            lambda: (
                (read_status(state).get("ota") or {}).get("state") == "idle"
                and any(s.get("windows") for s in read_status(state).get("streams", []))
            ),
            60,
            "the updater idle and the stream scoring",
            agent,
        )
        assert "note" not in read_status(state)["ota"]  # the root was accepted
        assert "/cryptography/" not in Path(f"/proc/{agent.pid}/maps").read_text()
    finally:
        out = stop_agent(agent)
    assert "Traceback" not in out, out
