"""The trust worker decides what the agent treats as verified, so it must run only the
agent's own code. `python -m` puts the current directory first on sys.path: an agent
started from a directory others can write (`edge-agent run` from /tmp, a shared work
dir) would run their `json.py` or `tuf/` in its trust worker -- code that could answer
"verified" for anything. The worker must not import from the agent's working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Env
from otamodels import copy_model
from rig import make_bundle
from tufrig import make_repos

from edge_agent.errors import EdgeAgentError
from edge_agent.updates import trust_worker
from edge_agent.updates.trust_worker import IsolatedChannel, WorkerError


def test_trust_worker_does_not_import_modules_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = tmp_path / "planted-code-ran"
    # `json` is imported by every trust worker before it reads its request.
    (cwd / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(7)\n")
    monkeypatch.chdir(cwd)
    root = tmp_path / "missing-root.json"
    # The root file is missing: the worker's own answer is a StateError; what matters is
    # whose code gave it.
    with pytest.raises(EdgeAgentError) as err:
        trust_worker.call("root", {"root_file": str(root), "now": "2026-01-01T00:00:00+00:00"}, 60)
    assert not marker.exists(), (
        f"the trust worker ran {cwd / 'json.py'} from the agent's working directory ({err.value})"
    )
    assert not isinstance(err.value, WorkerError), err.value


def test_trust_worker_imports_tuf_from_the_environment_not_a_planted_package(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted `tuf/` in the working directory is not imported, and the real python-tuf
    (the venv's site-packages, reached in isolated mode) still refreshes the channel."""
    cwd = env.tmp / "cwd"
    (cwd / "tuf").mkdir(parents=True)
    marker = env.tmp / "planted-tuf-ran"
    (cwd / "tuf" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with make_repos(env.tmp / "repos") as repos:
        v2 = make_bundle(env, copy_model(env.tmp / "model-v2", 2), "vib-v2.bundle")
        repos.direct(repos.release(v2))
        monkeypatch.chdir(cwd)
        (got,) = IsolatedChannel(repos.channel(), env.tmp / "state").refresh()
    assert not marker.exists(), f"the trust worker imported {cwd / 'tuf'}"
    assert got.version == 2
