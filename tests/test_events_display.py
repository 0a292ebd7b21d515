"""`edge-agent events` shows numbers whole and survives a damaged history file."""

from __future__ import annotations

from edge_agent.reporting.history import HISTORY_FILE, EventHistory
from tests.agentutil import run_cli


def _end(peak: float, threshold: float) -> dict[str, object]:
    return {
        "kind": "anomaly",
        "event": "end",
        "stream": "pump",
        "t_sample": 1_000.0,
        "t_start": 940.0,
        "duration_s": 60.0,
        "score": peak,
        "peak_score": peak,
        "threshold": threshold,
        "model": "pump-pca-int8-onnx",
        "model_version": 1,
    }


def test_large_and_small_scores_are_rounded_not_cut(tmp_path):
    # PCA scores reach millions; cutting the text to 6 characters showed 1234567 as 123456
    h = EventHistory(tmp_path)
    h.record(_end(1_234_567.0, 0.000012345))
    h.close()  # written by the history's thread: close() writes what is queued
    r = run_cli("events", "--state-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "peak score 1.2346e+06 " in r.stdout
    assert "(threshold 1.2345e-05," in r.stdout


def test_a_damaged_record_is_shown_without_its_time_not_a_traceback(tmp_path):
    h = EventHistory(tmp_path)
    h.record(_end(50.0, 5.0))
    h.close()
    with (tmp_path / HISTORY_FILE).open("a") as f:
        f.write('{"kind": "anomaly", "event": "start", "t_sample": 1e300, "score": "x"}\n')
    for fmt in ((), ("--csv",)):
        r = run_cli("events", "--state-dir", str(tmp_path), *fmt)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stdout.splitlines()) == 2 + len(fmt)  # both records (and a header)


def test_an_unreadable_history_is_named_with_the_reason(tmp_path):
    (tmp_path / HISTORY_FILE).mkdir()  # something made a directory where the file goes
    r = run_cli("events", "--state-dir", str(tmp_path))
    assert r.returncode == 1
    assert "cannot read the event history" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_file_given_as_state_dir_is_called_not_a_directory(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text("")
    r = run_cli("events", "--state-dir", str(f))
    assert r.returncode == 1
    assert "not a directory" in r.stderr
