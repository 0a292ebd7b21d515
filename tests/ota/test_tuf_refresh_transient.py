"""A refresh of the TUF channel that cannot finish is transient, never a verdict: a
repository server that is down is a `failed` state (refreshed again later), cleared by
the next refresh that reads the channel; and an agent told to stop (SIGTERM) during a
slow refresh cancels it -- the trust worker is killed -- instead of waiting it out."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import BinaryIO, ClassVar

import pytest
from conftest import Env
from fleet import start_agent, stop_agent, wait_until, write_config
from otamodels import copy_model
from rig import make_bundle, make_rig
from test_trust_worker import _children, _gone
from tufrig import Repos, make_repos

from edge_agent.updates.channel import UpdateChannel
from ota.serve import BundleServer, DirectoryRequestHandler, _Server
from tests.mosquitto import Broker


class _Switchable(DirectoryRequestHandler):
    """The director's files, or 503 for everything while `down` is set."""

    down: ClassVar[threading.Event] = threading.Event()

    def _handle(self, body: bool) -> None:
        if type(self).down.is_set():
            self.send_error(503, "down for maintenance")
            return
        super()._handle(body)


@pytest.fixture
def switchable_director(env: Env) -> Iterator[tuple[Repos, BundleServer, threading.Event]]:
    with make_repos(env.tmp / "repos") as repos:
        down = threading.Event()
        handler = type("H", (_Switchable,), {"root": repos.director.path, "down": down})
        server = BundleServer(_Server(("127.0.0.1", 0), handler))
        try:
            yield repos, server, down
        finally:
            server.close()


def test_a_repository_server_that_is_down_is_a_transient_failure_then_idle(
    env: Env, switchable_director: tuple[Repos, BundleServer, threading.Event]
) -> None:
    repos, server, down = switchable_director
    cfg = repos.channel()
    cfg = type(cfg)(**{**cfg.__dict__, "director_url": server.url("").rstrip("/")})
    with make_rig(env, channel=UpdateChannel(cfg, env.tmp / "state")) as rig:
        repos.direct(repos.release(make_bundle(env, copy_model(env.tmp / "m2", 2), "v2.b")))
        assert rig.updater.check_channel() == "committed", rig.published[-1]
        down.set()
        assert rig.updater.check_channel() == "failed"
        last = rig.published[-1]
        assert last["state"] == "failed"  # not "rejected": nothing was judged
        assert last["detail"].startswith("DownloadError: director repository: "), last
        assert last["detail"].endswith("; refreshed again later")
        n = len(rig.published)
        assert rig.updater.check_channel() == "failed"
        assert len(rig.published) == n  # said once, not at every scheduled refresh
        down.clear()
        assert rig.updater.check_channel() == "idle"
        snap = rig.updater.snapshot()
        assert snap["state"] == "idle"  # status and the retained state/ota summary
        assert snap["channel"]["note"] == ""
        assert [e["state"] for e in snap["events"][-2:]] == ["failed", "idle"]
        assert rig.updater.check_channel() == "idle"
        assert [e["state"] for e in rig.updater.snapshot()["events"][-2:]] == ["failed", "idle"]
        assert len(rig.published) == n  # ota/state carries steps and verdicts, not idle
        assert rig.pipeline.model.card.version == 2


class _TrickleDirector(DirectoryRequestHandler):
    """The director's snapshot a byte every 0.2 s (slow, above a 1 byte/s minimum)."""

    started: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()

    def _send_body(self, f: BinaryIO, length: int) -> None:
        if not self.path.endswith("snapshot.json"):
            super()._send_body(f, length)
            return
        type(self).started.set()
        while not type(self).release.wait(0.2):
            chunk = f.read(1)
            if not chunk:
                return
            self.wfile.write(chunk)
            self.wfile.flush()
        self.wfile.write(f.read())


@pytest.mark.broker
def test_sigterm_during_a_slow_refresh_cancels_it_and_kills_the_worker(
    env: Env, broker: Broker
) -> None:
    with make_repos(env.tmp / "repos") as repos:
        started, release = threading.Event(), threading.Event()
        handler = type(
            "H",
            (_TrickleDirector,),
            {"root": repos.director.path, "started": started, "release": release},
        )
        slow = BundleServer(_Server(("127.0.0.1", 0), handler))
        try:
            ch = repos.channel()
            extra = "\n".join([
                f'image_url = "{ch.image_url}"',
                f'director_url = "{slow.url("").rstrip("/")}"',
                f'image_root_file = "{ch.image_root}"',
                f'director_root_file = "{ch.director_root}"',
            ])  # fmt: skip
            cfg = write_config(env.tmp, "gw-slow", broker.port, None, extra_ota=extra)
            agent = start_agent(cfg)
            try:
                wait_until(started.is_set, 60, "the director's snapshot requested", agent)
                kids = [k for k in _children(agent.pid) if not _gone(k)]
                assert kids, "no trust worker runs the refresh"
            finally:
                out = stop_agent(agent)
            wait_until(lambda: all(_gone(k) for k in kids), 30, "the worker to be killed")
        finally:
            release.set()
            slow.close()
    assert agent.returncode == 0, out
    assert "stopped during a refresh of the update channel" in out, out
    assert "Traceback" not in out, out
