"""`edge-agent model new` on input a new user really has: each mistake is refused with
exit 2 and a message that says what was wrong (never a traceback, never a model with
wrong numbers in its card); decimal commas can be read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.agentutil import run_cli


def _csv(path: Path, *, delimiter: str = ",", decimal: str = ".") -> Path:
    rng = np.random.default_rng(3)
    lines = [delimiter.join(("t", "a", "b"))]
    for i in range(400):
        a, b = 20 + rng.standard_normal(), 5 + rng.standard_normal()
        row = (str(i), f"{a:.3f}".replace(".", decimal), f"{b:.3f}".replace(".", decimal))
        lines.append(delimiter.join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def _new(*args: str) -> tuple[int, str]:
    r = run_cli("model", "new", *args, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stderr


def test_a_file_not_in_utf8_is_named_with_what_to_do(tmp_path):
    data = _csv(tmp_path / "d.csv")
    data.write_bytes(data.read_bytes().replace(b"t,a,b", "t,a°C,b".encode("latin-1")))
    rc, err = _new("--data", str(data), "--columns", "a°C,b", "--out", str(tmp_path / "m"))
    assert rc == 2
    assert "not UTF-8" in err
    assert "save the CSV as UTF-8" in err


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (("--rate-hz", "0"), "--rate-hz 0: expected a positive sample rate"),
        (("--rate-hz", "nan"), "--rate-hz nan: expected a positive sample rate"),
        (("--delimiter", ";;"), "--delimiter ';;': one character"),
        (("--name", "a/b"), "--name 'a/b': a model name becomes a folder name"),
        (("--timestamp-column", "a"), "--timestamp-column 'a' is also in --columns"),
        (("--decimal", ";"), "--decimal ';': expected . or ,"),
        (("--decimal", ","), "the delimiter is , too"),
    ],
)
def test_settings_that_cannot_build_a_true_model_are_refused(tmp_path, extra, expect):
    data = _csv(tmp_path / "d.csv")
    rc, err = _new("--data", str(data), "--columns", "a,b", "--out", str(tmp_path / "m"), *extra)
    assert rc == 2
    assert expect in err
    assert not (tmp_path / "m").exists()


def test_an_out_that_is_a_file_or_cannot_be_written_is_named(tmp_path):
    data = _csv(tmp_path / "d.csv")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    rc, err = _new("--data", str(data), "--columns", "a,b", "--out", str(afile), "--force")
    assert rc == 2
    assert "exists and is not a directory" in err
    assert afile.read_text() == "mine"
    rc, err = _new("--data", str(data), "--columns", "a,b", "--out", str(afile / "sub" / "m"))
    assert rc == 2
    assert "cannot write the model" in err


def test_a_folder_given_as_data_is_called_a_directory(tmp_path):
    rc, err = _new("--data", str(tmp_path), "--columns", "a,b", "--out", str(tmp_path / "m"))
    assert rc == 2
    assert "is a directory" in err


def test_decimal_commas_are_refused_with_the_option_then_read_with_it(tmp_path):
    data = _csv(tmp_path / "d.csv", delimiter=";", decimal=",")
    args = ("--data", str(data), "--columns", "a,b", "--timestamp-column", "t")
    rc, err = _new(*args, "--out", str(tmp_path / "m"))
    assert rc == 2
    assert "add --decimal ," in err
    assert "in the replay source" not in err  # the replay config's keys are not options here
    r = run_cli("model", "new", *args, "--decimal", ",", "--out", str(tmp_path / "m"), "--json")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "m" / "m-fp32-onnx" / "model.json").read_text())
    mean = card["preprocessing"]["mean"]
    assert abs(mean[0] - 20) < 0.3
    assert abs(mean[1] - 5) < 0.3


def test_skipped_rows_are_said_not_silently_dropped(tmp_path):
    data = _csv(tmp_path / "d.csv")
    lines = data.read_text().splitlines()
    lines[10] = "9,abc,5.0"  # a sensor wrote text
    lines[20] = "19,20.0"  # a row cut short
    data.write_text("\n".join(lines) + "\n")
    r = run_cli("model", "new", "--data", str(data), "--columns", "a,b", "--out",
                str(tmp_path / "m"), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    notes = json.loads(r.stdout)["notes"]
    assert any(f"{data}: 2 row(s) skipped" in n for n in notes), notes
    assert "2 row(s) skipped" in (tmp_path / "m" / "REPORT.md").read_text()


def test_a_bad_time_is_named_by_its_value_and_row(tmp_path):
    data = _csv(tmp_path / "d.csv")
    lines = data.read_text().splitlines()
    lines[101] = lines[101].replace("100,", "notatime,", 1)
    data.write_text("\n".join(lines) + "\n")
    rc, err = _new("--data", str(data), "--columns", "a,b", "--timestamp-column", "t",
                   "--out", str(tmp_path / "m"))  # fmt: skip
    assert rc == 2
    assert "'notatime' (data row 101) is not a time" in err  # not "Invalid isoformat: '0'"


def test_npy_input_that_cannot_mean_what_was_asked_is_refused(tmp_path):
    arr = tmp_path / "d.npy"
    np.save(arr, np.random.default_rng(0).standard_normal((400, 2)))
    rc, err = _new("--data", str(arr), "--columns", "a,b", "--timestamp-column", "t",
                   "--out", str(tmp_path / "m"))  # fmt: skip
    assert rc == 2  # it was silently ignored: the card said 1 Hz
    assert "an .npy array has no named columns" in err
    fake = tmp_path / "fake.npy"
    fake.write_text("hello")
    rc, err = _new("--data", str(fake), "--columns", "a,b", "--out", str(tmp_path / "m"))
    assert rc == 2
    assert "not in numpy's .npy format" in err
    assert "pickle" not in err  # numpy's text tells the user to unpickle an untrusted file
