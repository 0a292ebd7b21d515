"""A cut transfer on the TUF channel (the web server killed mid-file: fewer bytes than its
Content-Length, then the connection closes) is a failed download -- transient, retried
with backoff -- and says so ("connection closed after N of M bytes"); it was reported as
a HashMismatchError ("Observed length 81920 does not match expected length 194560")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import pytest
from conftest import Env
from otamodels import copy_model
from rig import make_bundle, make_rig
from tuf.api import exceptions as tuf_errors
from tufrig import Repos, make_repos

from edge_agent.updates.channel import UpdateChannel
from ota.serve import BundleServer, DirectoryRequestHandler, _Server
from ota.tuf_fetcher import BoundedFetcher

CUT = 1000


class _CutTargets(DirectoryRequestHandler):
    """Metadata in full; a target file's first CUT bytes, then the connection closes
    (the declared Content-Length is the whole file's)."""

    def _send_body(self, f: BinaryIO, length: int) -> None:
        if not self.path.startswith("/targets/"):
            super()._send_body(f, length)
            return
        self.wfile.write(f.read(CUT))
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def cut_image(env: Env) -> Iterator[tuple[Repos, BundleServer]]:
    with make_repos(env.tmp / "repos") as repos:
        server = BundleServer(
            _Server(("127.0.0.1", 0), type("H", (_CutTargets,), {"root": repos.image.path}))
        )
        try:
            yield repos, server
        finally:
            server.close()


def test_a_body_shorter_than_its_content_length_is_a_download_error(
    env: Env, cut_image: tuple[Repos, BundleServer]
) -> None:
    repos, server = cut_image
    bundle = make_bundle(env, copy_model(env.tmp / "m2", 2), "v2.b")
    path = repos.release(bundle)
    served = next((repos.image.path / "targets").rglob(f"*.{path.split('/')[-1]}"))
    size = served.stat().st_size
    assert size > CUT
    url = server.url(f"targets/{served.relative_to(repos.image.path / 'targets')}")
    with pytest.raises(tuf_errors.DownloadError) as e:
        b"".join(BoundedFetcher().fetch(url))
    assert f"connection closed after {CUT} of {size} bytes" in str(e.value)


def test_a_cut_target_download_is_a_transient_failure_not_a_hash_mismatch(
    env: Env, cut_image: tuple[Repos, BundleServer]
) -> None:
    repos, server = cut_image
    cfg = repos.channel()
    cfg = type(cfg)(**{**cfg.__dict__, "image_url": server.url("").rstrip("/")})
    with make_rig(env, channel=UpdateChannel(cfg, env.tmp / "state")) as rig:
        repos.direct(repos.release(make_bundle(env, copy_model(env.tmp / "m2", 2), "v2.b")))
        assert rig.updater.check_channel() == "failed"
        detail = rig.published[-1]["detail"]
        assert detail.startswith("DownloadError: image repository: "), detail
        assert f"connection closed after {CUT} of " in detail
        assert "trying again in" in detail  # backoff: a retry, not a verdict
        assert rig.updater.snapshot()["channel"]["note"] == ""
        assert not (env.tmp / "state" / "slots").exists()
        assert rig.pipeline.model.card.version == 1
