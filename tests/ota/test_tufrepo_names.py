"""`edge-ota repo add` names a target and its file after the bundle's model name: a
name that is not one plain path component ("../../x", "/abs", "a/b") must be refused
before anything is written, or the release would land outside the repository."""

from __future__ import annotations

import pytest
from conftest import Env
from otamodels import copy_model
from rig import make_bundle
from tufrig import make_repos

from ota.tufrepo import RepositoryError


@pytest.mark.parametrize("name", ["../../escaped", "/abs-model", "sub/model", ".hidden", "a\\b"])
def test_repo_add_refuses_a_model_name_that_is_not_one_path_component(env: Env, name: str) -> None:
    bundle = make_bundle(env, copy_model(env.tmp / "m-hostile", 2, name=name), "hostile.bundle")
    with make_repos(env.tmp / "deep" / "er" / "repos") as repos:
        targets_before = repos.image.targets().signed.version
        with pytest.raises(RepositoryError, match="model name") as e:
            repos.release(bundle)
        assert repr(name) in str(e.value)
        assert repos.image.targets().signed.version == targets_before
    written = [p for p in env.tmp.rglob("*") if p.is_file() and "hostile" not in p.name]
    assert not [p for p in written if p.name.endswith("-v2.bundle")], written


def test_repo_add_keeps_taking_ordinary_model_names(env: Env) -> None:
    d = copy_model(env.tmp / "m-ok", 2, name="vib-ae_int8.v1")
    with make_repos(env.tmp / "repos") as repos:
        path = repos.release(make_bundle(env, d, "ok.bundle"))
        assert path == "vib-ae_int8.v1/vib-ae_int8.v1-v2.bundle"
        assert list((repos.image.path / "targets" / "vib-ae_int8.v1").glob("*-v2.bundle"))
