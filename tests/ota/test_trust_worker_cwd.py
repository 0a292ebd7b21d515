"""The trust worker decides what the agent treats as verified, so it must run only the
agent's own code. `python -m` puts the current directory first on sys.path: an agent
started from a directory others can write (`edge-agent run` from /tmp, a shared work
dir) would run their `json.py` or `tuf/` in its trust worker -- code that could answer
"verified" for anything. The worker must not import from the agent's working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import EdgeAgentError
from edge_agent.updates import trust_worker
from edge_agent.updates.trust_worker import WorkerError


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
