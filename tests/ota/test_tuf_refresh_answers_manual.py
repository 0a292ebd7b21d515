"""Issue 14: "Updater work never blocks manual rollback". A repository server (or anyone on
the path to it) that sends the channel's metadata slowly, but above the minimum rate,
holds a refresh of the TUF channel open for minutes (up to the refresh's 900 s in the
agent). A manual request (rollback, status of slots) must still be answered meanwhile,
as it is during a slow bundle download (test_update_attacks
test_slow_retrieval_is_given_up_and_manual_requests_are_answered_meanwhile)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

import pytest
from conftest import Env
from rig import make_rig
from tufrig import Repos, make_repos

from edge_agent.updates.channel import UpdateChannel
from ota.fetch import FetchLimits
from ota.serve import BundleServer, DirectoryRequestHandler, _Server


class _TrickleSnapshot(DirectoryRequestHandler):
    """Every file at full speed except snapshot metadata: a byte every 0.2 s until
    `release` is set, then the rest (a valid file, delivered slowly)."""

    release = threading.Event()
    started = threading.Event()

    def _send_body(self, f: BinaryIO, length: int) -> None:
        if not self.path.endswith("snapshot.json"):
            super()._send_body(f, length)
            return
        type(self).started.set()
        sent = 0
        while sent < length - 1 and not type(self).release.wait(0.2):
            self.wfile.write(f.read(1))
            self.wfile.flush()
            sent += 1
        self.wfile.write(f.read())
        self.wfile.flush()


@pytest.fixture
def slow_director(env: Env) -> Iterator[tuple[Repos, BundleServer, type[_TrickleSnapshot]]]:
    with make_repos(env.tmp / "repos") as repos:

        class Handler(_TrickleSnapshot):
            root = repos.director.path
            release = threading.Event()
            started = threading.Event()

        slow = BundleServer(_Server(("127.0.0.1", 0), Handler))
        try:
            yield repos, slow, Handler
        finally:
            Handler.release.set()
            slow.close()


def test_manual_request_is_answered_while_channel_metadata_trickles(
    env: Env, slow_director: tuple[Repos, BundleServer, type[_TrickleSnapshot]]
) -> None:
    repos, slow, handler = slow_director
    # Slow but above the minimum rate: the fetcher rightly keeps going.
    limits = FetchLimits(min_rate_bps=1.0, rate_window_s=30.0, base_s=600.0)
    cfg = repos.channel(limits=limits)
    cfg = type(cfg)(**{**cfg.__dict__, "director_url": slow.url("").rstrip("/")})
    with make_rig(env, channel=UpdateChannel(cfg, env.tmp / "state")) as rig:
        rig.updater.start()  # refreshes at once
        assert handler.started.wait(60), "the director's snapshot was never requested"
        answered = threading.Event()
        asked = time.monotonic()
        assert rig.updater.call_between_updates(answered.set)
        ok = answered.wait(10)
        waited = time.monotonic() - asked
        handler.release.set()  # let the refresh finish, so the rig stops promptly
        assert ok, f"a manual request waited behind a channel refresh ({waited:.0f} s)"
        assert rig.pipeline.model.card.version == 1
