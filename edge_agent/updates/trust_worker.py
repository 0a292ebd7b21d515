"""The updater's trust work in a short-lived child process.

python-tuf's ngclient (refresh, download with length and hashes enforced) and the
signature checks under it and under announced bundles need python-tuf, securesystemslib
and cryptography: ~15 MB that would stay resident in the agent for ever after its first
refresh. So the agent runs each refresh, each download, each check of the announcement
root and of an announced manifest's signatures, and each re-check of a slot's seal as

    python -I -c <bootstrap: sys.path; trust_worker.main()>   (one JSON request on
                                stdin, one JSON answer on stdout, then exit)

and keeps only the verified result: the directed targets (path, length, hashes,
version), the image targets metadata a slot's seal keeps, the trusted root, a verified
manifest, a seal verdict. The child runs the same code the agent ran in-process before
(`UpdateChannel`, `load_root`, `ota.verify.verify`, `check_seal`), as
the same user, on the same state directory; it dies with the agent (PR_SET_PDEATHSIG,
and a parent check), so a SIGKILL of the agent never leaves it writing. A child that
dies, hangs past its deadline or answers nonsense is a transient failure
(DownloadError: retried with backoff), never a verdict on a target or a slot.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import edge_agent
import ota.errors
from edge_agent.errors import EdgeAgentError, StateError
from edge_agent.updates.channel_types import ChannelConfig, DirectedTarget
from edge_agent.updates.seal import SealTrust, TufEvidence
from ota.errors import DownloadError, OtaError, TargetMismatchError
from ota.manifest import Manifest
from ota.root import Root
from ota.signing import Signature, signatures_from_list, signatures_to_list
from ota.verify import VerifiedManifest

__all__ = [
    "IsolatedChannel",
    "WorkerError",
    "call",
    "check_seal_isolated",
    "load_root_isolated",
    "verify_isolated",
]

# The errors a child may report, by name (what crosses the process boundary): every
# OtaError, so the agent acts on and reports each exactly as if it had been raised here.
_ERRORS: dict[str, type[EdgeAgentError]] = {
    name: obj
    for name, obj in vars(ota.errors).items()
    if isinstance(obj, type) and issubclass(obj, OtaError)
}
_ERRORS["StateError"] = StateError  # load_root: the root file unreadable
REFRESH_TIMEOUT_S = 900.0  # both repositories' metadata, each file under FetchLimits
# Checks of local files (root, manifest, seal): seconds even for a large model; well
# inside systemd's TimeoutStartSec (120 s), since a seal is checked before READY.
CHECK_TIMEOUT_S = 30.0
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


class WorkerError(DownloadError):
    """The child did not answer (could not start, died, hung): transient."""


def _bootstrap() -> str:
    """The child's command: only the agent's own code and the agent's import path.
    `python -m` would put the working directory first on sys.path (a json.py or tuf/
    planted there would run in the process whose answer is trusted), and `-P` needs
    Python 3.11. So the child runs isolated (`-I`: no working directory, no PYTHON*
    variables, no user site; the interpreter's own site-packages, a venv's included, as
    usual) and gets this process's absolute sys.path entries, the package's first ('' and
    relative entries name a working directory: dropped)."""
    pkg_root = str(Path(edge_agent.__file__).resolve().parent.parent)
    path = [pkg_root] + [p for p in sys.path if p and os.path.isabs(p) and p != pkg_root]
    return (
        f"import sys; sys.path[:0] = {path!r}; "
        "from edge_agent.updates.trust_worker import main; sys.exit(main())"
    )


# --- the agent's side ----------------------------------------------------------------


def call(
    op: str,
    request: dict[str, Any],
    timeout_s: float,
    cancel: threading.Event | None = None,
    root_versions: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Run `op` in a child; its answer, or the OtaError it reported (re-raised here).
    `root_versions` is updated with the trusted root versions the child reached, also
    when it reports an error (as `UpdateChannel.root_versions` is)."""
    body = json.dumps({"op": op, "ppid": os.getpid(), **request}).encode()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _bootstrap()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    except OSError as e:
        raise WorkerError(f"trust worker: cannot start: {e.strerror or e}") from e
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.extend(proc.communicate(body)), daemon=True)
    t.start()
    deadline = time.monotonic() + timeout_s
    while t.is_alive():
        t.join(_POLL_S)
        if (cancel is not None and cancel.is_set()) or time.monotonic() > deadline:
            proc.kill()
            t.join(10)
            raise WorkerError(
                f"trust worker ({op}): {'cancelled' if cancel and cancel.is_set() else 'timed out'}"
            )
    stdout, stderr = [*out, b"", b""][:2]
    try:
        answer = json.loads(stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
        raise WorkerError(f"trust worker ({op}) exited {proc.returncode}: {tail[0][:300]}")
    if root_versions is not None and isinstance(answer.get("root_versions"), dict):
        root_versions.update({str(k): int(v) for k, v in answer["root_versions"].items()})
    if "error" in answer:
        name, message = answer["error"]
        raise _ERRORS.get(name, OtaError)(str(message))
    result = answer.get("ok")
    if not isinstance(result, dict):
        raise WorkerError(f"trust worker ({op}): an answer without a result")
    return result


class IsolatedChannel:
    """`UpdateChannel`'s interface; every call runs in a trust worker."""

    def __init__(self, cfg: ChannelConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.root_versions: dict[str, int] = {}
        self._evidence: dict[str, TufEvidence] = {}

    def _request(self) -> dict[str, Any]:
        return {"channel": self.cfg.to_dict(), "state_dir": str(self.state_dir)}

    def refresh(self, cancel: threading.Event | None = None) -> list[DirectedTarget]:
        """`cancel` set (the agent stopping): the child is killed, a WorkerError."""
        r = call("refresh", self._request(), REFRESH_TIMEOUT_S, cancel, self.root_versions)
        return [DirectedTarget.from_dict(t) for t in r["targets"]]

    def download(
        self, target: DirectedTarget, dest: Path, cancel: threading.Event | None = None
    ) -> Path:
        """The child refreshes again, downloads `target` if the channel still names it
        with the same length and hashes, and hands back the targets metadata it was
        verified against (the seal's evidence)."""
        timeout = REFRESH_TIMEOUT_S + self.cfg.limits.deadline_s(target.length)
        req = {**self._request(), "target": target.to_dict(), "dest": str(dest)}
        r = call("download", req, timeout, cancel, self.root_versions)
        self._evidence[target.path] = TufEvidence(
            targets_json=base64.b64decode(r["targets_json"]),
            path=target.path,
            root_version=int(r["root_version"]),
        )
        return dest

    def evidence(self, target: DirectedTarget) -> TufEvidence:
        ev = self._evidence.pop(target.path, None)
        if ev is None:
            raise DownloadError(f"{target.path}: no verified targets metadata for it")
        return ev


def check_seal_isolated(
    slots_dir: Path, slot: str, slot_dir: Path, manifest_bytes: bytes, trust: SealTrust
) -> str | None:
    """`check_seal` in a trust worker. A worker that cannot answer is not a verdict on
    the slot: the check then runs here (the memory is spent, the slot judged right)."""
    from edge_agent.updates.seal import check_seal

    req = {
        "slots_dir": str(slots_dir),
        "slot": slot,
        "slot_dir": str(slot_dir),
        "manifest": base64.b64encode(manifest_bytes).decode(),
        "root_file": str(trust.root_file) if trust.root_file else None,
        "image_root_file": str(trust.image_root_file) if trust.image_root_file else None,
        "image_meta_dir": str(trust.image_meta_dir) if trust.image_meta_dir else None,
    }
    try:
        r = call("seal", req, CHECK_TIMEOUT_S)
    except WorkerError:
        local = SealTrust(trust.root_file, trust.image_root_file, trust.image_meta_dir)
        return check_seal(slots_dir, slot, slot_dir, manifest_bytes, local)
    why = r["why"]
    return None if why is None else str(why)


def load_root_isolated(path: Path, now: datetime) -> Root:
    """`updater.load_root` (self-signed threshold, not expired) in a trust worker; the
    root it accepted, as a value (its keys are bytes here; verifying is the child's)."""
    try:
        r = call("root", {"root_file": str(path), "now": now.isoformat()}, CHECK_TIMEOUT_S)
    except WorkerError:  # not a verdict on the root: check it here
        from edge_agent.updates.root_file import load_root

        return load_root(path, now)
    return Root.from_dict(r["root"])


def verify_isolated(  # noqa: PLR0917 - ota.verify.verify's positional contract
    manifest_bytes: bytes,
    signatures: Sequence[Signature],
    trusted_root: Root,
    installed_version: int,
    profile: str | None,
    now: datetime,
    *,
    agent_version: str | None = None,
) -> VerifiedManifest:
    """`ota.verify.verify` in a trust worker: the same checks, the same errors. A worker
    that cannot answer is not a verdict: the check then runs here."""
    req = {
        "manifest": base64.b64encode(manifest_bytes).decode(),
        "signatures": signatures_to_list(signatures),
        "root": trusted_root.to_dict(),
        "installed": installed_version,
        "profile": profile,
        "now": now.isoformat(),
        "agent_version": agent_version,
    }
    try:
        r = call("verify", req, CHECK_TIMEOUT_S)
    except WorkerError:
        from ota.verify import verify

        return verify(
            manifest_bytes, signatures, trusted_root, installed_version, profile, now,
            agent_version=agent_version,
        )  # fmt: skip
    return VerifiedManifest(
        manifest=Manifest.from_bytes(manifest_bytes),
        manifest_bytes=manifest_bytes,
        signer_keyids=tuple(str(k) for k in r["signer_keyids"]),
        root_version=int(r["root_version"]),
    )


# --- the child's side ------------------------------------------------------------------


def _die_with_parent(ppid: int) -> None:
    """A SIGKILLed agent takes its worker along: nothing writes after it is gone."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the watch below still ends it
    if os.getppid() != ppid:
        os._exit(3)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != ppid:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _channel(req: dict[str, Any], side: dict[str, Any]) -> Any:
    from edge_agent.updates.channel import UpdateChannel

    ch = UpdateChannel(ChannelConfig.from_dict(req["channel"]), Path(req["state_dir"]))
    side["root_versions"] = ch.root_versions  # filled as each repository refreshes
    return ch


def _refresh(req: dict[str, Any], side: dict[str, Any]) -> dict[str, Any]:
    ch = _channel(req, side)
    return {"targets": [t.to_dict() for t in ch.refresh()]}


def _download(req: dict[str, Any], side: dict[str, Any]) -> dict[str, Any]:
    ch = _channel(req, side)
    want = DirectedTarget.from_dict(req["target"])
    for t in ch.refresh():
        if (t.path, t.length, t.hashes) == (want.path, want.length, want.hashes):
            ch.download(t, Path(req["dest"]))
            ev = ch.evidence(t)
            return {
                "targets_json": base64.b64encode(ev.targets_json).decode(),
                "root_version": ev.root_version,
            }
    raise TargetMismatchError(f"{want.path}: the channel no longer names it (refresh again)")


def _seal(req: dict[str, Any], side: dict[str, Any]) -> dict[str, Any]:
    from edge_agent.updates.seal import check_seal

    def opt(key: str) -> Path | None:
        return Path(req[key]) if req.get(key) else None

    trust = SealTrust(opt("root_file"), opt("image_root_file"), opt("image_meta_dir"))
    why = check_seal(
        Path(req["slots_dir"]), str(req["slot"]), Path(req["slot_dir"]),
        base64.b64decode(req["manifest"]), trust,
    )  # fmt: skip
    return {"why": why}


def _root(req: dict[str, Any], side: dict[str, Any]) -> dict[str, Any]:
    from edge_agent.updates.root_file import load_root

    root = load_root(Path(req["root_file"]), datetime.fromisoformat(req["now"]))
    return {"root": root.to_dict()}


def _verify(req: dict[str, Any], side: dict[str, Any]) -> dict[str, Any]:
    from ota.verify import verify

    vm = verify(
        base64.b64decode(req["manifest"]),
        signatures_from_list(req["signatures"], "signatures"),
        Root.from_dict(req["root"]),
        int(req["installed"]),
        req["profile"],
        datetime.fromisoformat(req["now"]),
        agent_version=req["agent_version"],
    )
    return {"signer_keyids": list(vm.signer_keyids), "root_version": vm.root_version}


_OPS = {
    "refresh": _refresh,
    "download": _download,
    "seal": _seal,
    "root": _root,
    "verify": _verify,
}


def main() -> int:
    req = json.loads(sys.stdin.buffer.read())
    _die_with_parent(int(req["ppid"]))
    side: dict[str, Any] = {}
    try:
        answer: dict[str, Any] = {"ok": _OPS[req["op"]](req, side)}
    except EdgeAgentError as e:
        name = type(e).__name__ if type(e).__name__ in _ERRORS else "OtaError"
        answer = {"error": [name, str(e)]}
    answer.update(side)
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
