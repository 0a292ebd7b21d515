"""`edge-ota` end to end, as an operator runs it (python -m ota, real files, real keys)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_model_dir
from craft import hostile_copy, replace_member
from otamodels import FP32, copy_model

from ota.cli import main
from ota.keys import load_public_key


def edge_ota(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ota", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_main(*args: str | Path) -> tuple[int, str]:
    """In-process, for setup steps (fast); the flows under test go through python -m ota."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([str(a) for a in args])
    return rc, out.getvalue()


@pytest.fixture
def signed_bundle(tmp_path: Path) -> tuple[Path, Path, Path]:
    """keygen x2 -> root init (threshold 2) -> root sign -> build -> sign: all via the CLI."""
    keys = tmp_path / "keys"
    for name in ("alice", "bob"):
        rc, out = run_main("keygen", "--out", keys, "--name", name, "--json")
        assert rc == 0
        assert json.loads(out)["keyid"]
    assert (keys / "alice.key").stat().st_mode & 0o777 == 0o600
    root = tmp_path / "root.json"
    rc, _ = run_main(
        "root", "init", "--key", keys / "alice.pub", "--key", keys / "bob.pub",
        "--threshold", "2", "--expires", "365d", "--out", root,
    )  # fmt: skip
    assert rc == 0
    rc, _ = run_main("root", "sign", root, "--key", keys / "alice.key", "--key", keys / "bob.key")
    assert rc == 0
    model = copy_model(tmp_path / "model", 4, name="vib-ae")  # build runs golden vectors
    bundle = tmp_path / "out" / "vib-ae-4.bundle"
    rc, _ = run_main(
        "build", model, "--version", "4", "--profiles", "rpi5", "x86-generic",
        "--expires", "30d", "--out", bundle,
    )  # fmt: skip
    assert rc == 0
    return bundle, root, keys


def test_keygen_root_build_sign_verify(signed_bundle: tuple[Path, Path, Path]) -> None:
    bundle, root, keys = signed_bundle
    r = edge_ota("verify", bundle, "--root", root)
    assert r.returncode == 1
    assert "SignatureError" in r.stderr
    assert "unsigned" in r.stderr
    r = edge_ota("sign", bundle, "--key", keys / "alice.key")
    assert r.returncode == 0, r.stderr
    r = edge_ota("verify", bundle, "--root", root)
    assert r.returncode == 1
    assert "ThresholdError" in r.stderr
    r = edge_ota("sign", bundle, "--key", keys / "bob.key")
    assert r.returncode == 0, r.stderr
    r = edge_ota("verify", bundle, "--root", root, "--profile", "rpi5", "--installed-version", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK: vib-ae v4")
    # The device-side checks are all reachable from the CLI.
    r = edge_ota("verify", bundle, "--root", root, "--installed-version", "4")
    assert (r.returncode, "RollbackError") == (1, r.stderr.split(":")[1].strip())
    r = edge_ota("verify", bundle, "--root", root, "--profile", "jetson-orin-nano")
    assert r.returncode == 1
    assert "ProfileMismatchError" in r.stderr
    r = edge_ota("verify", bundle, "--root", root, "--now", "2099-01-01T00:00:00Z")
    assert r.returncode == 1
    assert "ExpiredError" in r.stderr


def test_tampered_bundle_fails_verify_with_message(
    signed_bundle: tuple[Path, Path, Path],
) -> None:
    bundle, root, keys = signed_bundle
    assert main(["sign", str(bundle), "--key", str(keys / "alice.key"), "--key",
                 str(keys / "bob.key")]) == 0  # fmt: skip
    size = (FP32 / "model.onnx").stat().st_size  # same size, other bytes: only the hash
    replace_member(bundle, "payload/model.onnx", b"\x00" * size)
    r = edge_ota("verify", bundle, "--root", root)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("edge-ota: HashMismatchError: model.onnx: sha256")


def test_inspect_json(
    signed_bundle: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, _, keys = signed_bundle
    assert main(["sign", str(bundle), "--key", str(keys / "alice.key")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(bundle), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["manifest"]["version"] == 4
    assert out["manifest"]["profiles"] == ["rpi5", "x86-generic"]
    assert [f["path"] for f in out["manifest"]["files"]] == ["model.json", "model.onnx"]
    assert len(out["signatures"]) == 1


def test_rotation_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = tmp_path / "k"
    for n in ("old1", "old2", "new1"):
        assert main(["keygen", "--out", str(k), "--name", n]) == 0
    old, new = tmp_path / "root1.json", tmp_path / "root2.json"
    assert main(["root", "init", "--key", str(k / "old1.pub"), "--key", str(k / "old2.pub"),
                 "--threshold", "2", "--expires", "365d", "--out", str(old)]) == 0  # fmt: skip
    assert main(["root", "sign", str(old), "--key", str(k / "old1.key"),
                 "--key", str(k / "old2.key")]) == 0  # fmt: skip
    assert main(["root", "rotate", str(old), "--key", str(k / "new1.pub"), "--threshold", "1",
                 "--expires", "365d", "--out", str(new)]) == 0  # fmt: skip
    assert main(["root", "sign", str(new), "--key", str(k / "new1.key"),
                 "--key", str(k / "old1.key")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["root", "verify", str(new), "--trusted", str(old)]) == 1
    assert "RootRotationError" in capsys.readouterr().err
    assert main(["root", "sign", str(new), "--key", str(k / "old2.key")]) == 0
    assert main(["root", "verify", str(new), "--trusted", str(old)]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["verify"],
        ["build", "x", "--profiles", "rpi5", "--expires", "tomorrow", "--out", "b"],
        ["verify", "/nonexistent.bundle", "--root", "/nonexistent.json"],
        ["sign", "/nonexistent.bundle", "--key", "k"],
    ],
)
def test_bad_usage_exits_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[:1] == ["build"]:
        argv[1] = str(write_model_dir(tmp_path / "m"))
        argv[-1] = str(tmp_path / "b.bundle")
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_build_refuses_version_other_than_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_model_dir(tmp_path / "m", version=4)
    argv = ["build", str(model), "--version", "5", "--profiles", "rpi5", "--expires", "1d",
            "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(argv) == 1
    assert "differs from the card's version 4" in capsys.readouterr().err


def test_help_exits_0() -> None:
    r = edge_ota("--help")
    assert r.returncode == 0
    for cmd in ("keygen", "root", "build", "sign", "verify", "inspect", "publish"):
        assert cmd in r.stdout


@pytest.mark.parametrize("kind", ["nested", "pax"])
def test_hostile_unsigned_parts_get_one_error_line_never_a_traceback(
    signed_bundle: tuple[Path, Path, Path], kind: str
) -> None:
    bundle, root, keys = signed_bundle
    assert main(["sign", str(bundle), "--key", str(keys / "alice.key"), "--key",
                 str(keys / "bob.key")]) == 0  # fmt: skip
    hostile = hostile_copy(bundle, bundle.with_name(f"{kind}.bundle"), kind)
    runs = {
        "verify": edge_ota("verify", hostile, "--root", root),
        "inspect": edge_ota("inspect", hostile),
        "sign": edge_ota("sign", hostile, "--key", keys / "alice.key"),
    }
    for cmd, r in runs.items():
        assert "Traceback" not in r.stderr, (cmd, r.stderr)
        lines = r.stderr.strip().splitlines()
        if kind == "nested" or cmd != "inspect":  # inspect reads only the header
            assert r.returncode == 1, (cmd, r.stderr)
            assert len(lines) == 1, (cmd, lines)
            assert lines[0].startswith("edge-ota: BundleFormatError: "), (cmd, lines)


def test_build_refuses_the_removed_downgrade_override(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "model", version=2)
    r = edge_ota(
        "build", model, "--profiles", "rpi5", "--expires", "30d", "--allow-downgrade",
        "--out", tmp_path / "b.bundle",
    )  # fmt: skip
    assert r.returncode == 2
    assert "roll forward" in r.stderr
    assert not (tmp_path / "b.bundle").exists()


def test_repo_commands_release_rotate_and_refresh(tmp_path: Path) -> None:
    from tuf.api.metadata import Metadata

    keys = tmp_path / "keys"
    for name in ("alice", "bob", "carol", "online"):
        assert run_main("keygen", "--out", keys, "--name", name)[0] == 0
    k = {n: keys / f"{n}.key" for n in ("alice", "bob", "carol", "online")}
    repo = tmp_path / "image"
    r = edge_ota(
        "repo", "init", repo, "--kind", "image", "--root-key", k["alice"], "--root-key",
        k["bob"], "--root-threshold", "2", "--targets-key", k["alice"], "--targets-key",
        k["bob"], "--targets-threshold", "2", "--online-key", k["online"],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    bundle = tmp_path / "b.bundle"
    assert run_main("build", copy_model(tmp_path / "m", 3, name="vib-ae"), "--profiles", "rpi5",
                    "--expires", "30d", "--out", bundle)[0] == 0  # fmt: skip
    # One targets key is below the threshold: nothing is released.
    r = edge_ota("repo", "add", repo, bundle, "--key", k["alice"], "--online-key", k["online"])
    assert r.returncode == 1
    assert "ThresholdError" in r.stderr
    r = edge_ota("repo", "add", repo, bundle, "--key", k["alice"], "--key", k["bob"],
                 "--online-key", k["online"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target"] == "vib-ae/vib-ae-v3.bundle"
    r = edge_ota(
        "repo", "rotate", repo, "--old-key", k["alice"], "--old-key", k["bob"], "--root-key",
        k["alice"], "--root-key", k["carol"], "--root-threshold", "2", "--targets-key",
        k["alice"], "--targets-key", k["carol"], "--targets-threshold", "2",
        "--online-key", k["online"],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    root2 = Metadata.from_file(str(repo / "metadata" / "2.root.json")).signed
    bob = load_public_key(keys / "bob.pub").raw.hex()
    assert all(key.keyval["public"] != bob for key in root2.keys.values())  # revoked
    ts = repo / "metadata" / "timestamp.json"
    before = Metadata.from_file(str(ts)).signed.version
    r = edge_ota("repo", "timestamp", repo, "--online-key", k["online"])
    assert r.returncode == 0, r.stderr
    assert Metadata.from_file(str(ts)).signed.version == before + 1
