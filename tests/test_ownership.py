"""Commands run as root leave nothing in the agent's state dir that the agent cannot use.
Needs root (chown); skipped with the reason otherwise."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from edge_agent.ownership import adopt_new_entries
from edge_agent.service.statelock import StateDirLock
from edge_agent.updates import manual_rollback as mr

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def _agent_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' to own the state dir")


def _state_dir(tmp_path: Path, pw: pwd.struct_passwd) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, pw.pw_uid, pw.pw_gid)
    return state


def test_entries_root_created_go_to_the_state_dir_owner(tmp_path: Path) -> None:
    pw = _agent_user()
    state = _state_dir(tmp_path, pw)
    (state / "calibration").mkdir()
    (state / "calibration" / "press.json").write_text("{}")
    (state / "slots.json").write_text("{}")
    changed = adopt_new_entries(state)
    assert len(changed) == 3
    for p in [state, *state.rglob("*")]:
        assert p.stat().st_uid == pw.pw_uid, p


def test_a_state_dir_owned_by_root_is_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "x").write_text("")
    assert adopt_new_entries(state) == []
    assert (state / "x").stat().st_uid == 0


def test_rollback_request_written_by_root_belongs_to_the_agent_user(tmp_path: Path) -> None:
    pw = _agent_user()
    state = _state_dir(tmp_path, pw)  # no ota/ yet: the request creates it
    mr.submit(state, "technician", 0.0)
    owners = {str(p.relative_to(state)): p.stat().st_uid for p in state.rglob("*")}
    assert owners == {"ota": pw.pw_uid, mr.REQUEST_FILE: pw.pw_uid}


def test_root_running_the_agent_on_the_agent_users_state_dir_is_refused(tmp_path: Path) -> None:
    from tests.agentutil import run_cli

    pw = _agent_user()
    state = _state_dir(tmp_path, pw)
    res = run_cli("run", "--demo", "--state-dir", str(state), "--max-windows", "5", timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"belongs to user {pw.pw_name}: run the agent as that user" in res.stderr
    assert list(state.iterdir()) == []  # nothing left behind owned by root


def test_a_lock_file_left_by_root_still_locks_for_the_agent_user() -> None:
    import shutil
    import tempfile

    from edge_agent.service.statelock import LOCK_FILE

    pw = _agent_user()
    base = Path(tempfile.mkdtemp(prefix="ea-own-"))  # pytest's tmp dirs are root-only
    base.chmod(0o755)
    try:
        _lock_as_agent_user(_state_dir(base, pw), pw, LOCK_FILE, StateDirLock)
    finally:
        shutil.rmtree(base)


def _lock_as_agent_user(
    state: Path, pw: pwd.struct_passwd, lock_file: str, lock: type[StateDirLock]
) -> None:
    (state / lock_file).write_text("")  # root's, mode 0644
    pid = os.fork()
    if pid == 0:  # the child becomes the agent's user and takes the lock
        code = 1
        try:
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            lock.acquire(state)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
