"""`edge-ota repo ...`, `edge-ota director set`, `edge-ota serve`, `edge-ota hint`: the
TUF image and director repositories (see ota/tufrepo.py and docs/ota.md).

python-tuf is imported inside the commands only: the bundle commands do not need it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ota.announce import DEFAULT_PREFIX, fleet_topic, hint_body
from ota.broker_args import add_broker_arguments, target_from_args
from ota.keys import PrivateKey, load_private_key, load_public_key

__all__ = ["add_repo_commands"]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _privs(paths: list[Path] | None) -> list[PrivateKey]:
    return [load_private_key(p) for p in paths or []]


def cmd_repo_init(args: argparse.Namespace) -> int:
    from ota.tufrepo import RepoKeys, init_repository

    roots = _privs(args.root_key)
    online = load_private_key(args.online_key)
    if args.kind == "director":  # the director's targets are signed online
        targets_pub, targets_thr, targets_signers = [online.public], 1, [online]
    else:
        targets_signers = _privs(args.targets_key)
        targets_pub, targets_thr = [k.public for k in targets_signers], args.targets_threshold
    keys = RepoKeys(
        [k.public for k in roots], args.root_threshold, targets_pub, targets_thr, online.public
    )
    init_repository(
        args.dir,
        keys,
        root_signers=roots,
        targets_signers=targets_signers,
        online=online,
        now=_now(),
    )
    print(
        f"{args.kind} repository created in {args.dir} (root v1: {args.dir}/metadata/1.root.json)"
    )
    return 0


def cmd_repo_add(args: argparse.Namespace) -> int:
    from ota.tufrepo import Repository

    tf = Repository(args.dir).add_bundle(
        args.bundle, _privs(args.key), load_private_key(args.online_key), _now()
    )
    print(json.dumps({"target": tf.path, "length": tf.length, "hashes": tf.hashes}))
    return 0


def cmd_repo_timestamp(args: argparse.Namespace) -> int:
    from ota.tufrepo import Repository

    v = Repository(args.dir).refresh_timestamp(load_private_key(args.online_key), _now())
    print(f"timestamp v{v} signed")
    return 0


def cmd_repo_rotate(args: argparse.Namespace) -> int:
    from ota.tufrepo import RepoKeys, Repository

    new_roots = _privs(args.root_key)
    keys = RepoKeys(
        [k.public for k in new_roots],
        args.root_threshold,
        [load_public_key(p) for p in args.targets_key],
        args.targets_threshold,
        load_public_key(args.online_key),
    )
    repo = Repository(args.dir)
    v = repo.rotate_root(keys, old_signers=_privs(args.old_key), new_signers=new_roots, now=_now())
    print(f"root v{v} written; keys left out are revoked")
    stale = repo.unsigned_under_root()
    if stale:
        # Devices walk to the new root at their next refresh and then refuse metadata its
        # keys did not sign: the operator must re-sign before that, so say it loudly.
        print(
            f"warning: {', '.join(stale)} still signed by the old keys; devices that walk to "
            f"root v{v} refuse this repository until you run: edge-ota repo resign "
            f"{args.dir} --key <new targets key>... --online-key <new online key>",
            file=sys.stderr,
        )
    return 0


def cmd_repo_resign(args: argparse.Namespace) -> int:
    from ota.tufrepo import Repository

    repo = Repository(args.dir)
    v = repo.resign(_privs(args.key), load_private_key(args.online_key), _now())
    print(f"targets v{v} re-signed, with a new snapshot and timestamp")
    return 0


def cmd_director_set(args: argparse.Namespace) -> int:
    from ota.tufrepo import Repository, direct

    tf = direct(
        Repository(args.dir),
        Repository(args.image),
        args.target,
        load_private_key(args.online_key),
        _now(),
        groups=args.group,
        devices=args.device,
    )
    whom = ", ".join([*(f"group {g}" for g in args.group), *(f"device {d}" for d in args.device)])
    print(f"directed {whom} to {tf.path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ota.serve import start_dir_server

    server = start_dir_server(args.dir, args.host, args.port)
    print(f"serving {args.dir} at {server.url('')}", flush=True)
    deadline = None if args.serve_for is None else time.monotonic() + args.serve_for
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def cmd_hint(args: argparse.Namespace) -> int:
    from ota.publish import publish_retained

    body = hint_body(_now())
    topics = [fleet_topic(g, args.prefix) for g in args.group]
    publish_retained(target_from_args(args), [(t, body) for t in topics])
    for t in topics:
        print(f"hint published on {t} (it carries no trust: devices refresh their channel)")
    return 0


def _cmd(p: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    p.set_defaults(func=func)


def add_repo_commands(sub: Any) -> None:
    _add_repo(sub)
    _add_director_serve_hint(sub)


def _add_repo(sub: Any) -> None:
    r = sub.add_parser(
        "repo", help="TUF image/director repositories: init, add, timestamp, rotate, resign"
    )
    rs = r.add_subparsers(dest="repo_command", required=True)
    x = rs.add_parser(
        "init",
        help="create a repository (root v1, empty targets)",
        description="Create a TUF repository directory: metadata/1.root.json, targets, "
        "snapshot and timestamp. An image repository's targets are signed by offline keys "
        "(--targets-key, threshold); a director's targets by its online key.",
    )
    x.add_argument("dir", type=Path, help="the repository directory to create")
    x.add_argument(
        "--kind",
        choices=["image", "director"],
        required=True,
        help="image: released bundles; director: which target each group runs",
    )
    x.add_argument(
        "--root-key",
        type=Path,
        action="append",
        required=True,
        help="offline root key (private key file from `edge-ota keygen`); repeat",
    )
    x.add_argument(
        "--root-threshold", type=int, default=1, help="root signatures needed (default 1)"
    )
    x.add_argument(
        "--targets-key",
        type=Path,
        action="append",
        help="image: offline targets key; repeat (director: the online key signs)",
    )
    x.add_argument(
        "--targets-threshold", type=int, default=1, help="targets signatures needed (default 1)"
    )
    x.add_argument(
        "--online-key",
        type=Path,
        required=True,
        help="online key for snapshot and timestamp (and a director's targets)",
    )
    _cmd(x, cmd_repo_init)
    x = rs.add_parser(
        "add",
        help="release a bundle into an image repository",
        description="Copy a bundle (from `edge-ota build`) into the image repository as a "
        "target and sign new targets, snapshot and timestamp. Prints the target path that "
        "`director set --target` takes.",
    )
    x.add_argument("dir", type=Path, help="the image repository")
    x.add_argument("bundle", type=Path, help="a bundle made by `edge-ota build`")
    x.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        help="offline targets key; repeat up to the targets threshold",
    )
    x.add_argument(
        "--online-key",
        type=Path,
        required=True,
        help="the repository's online (snapshot, timestamp) key",
    )
    _cmd(x, cmd_repo_add)
    x = rs.add_parser(
        "timestamp",
        help="sign a fresh timestamp (run on a schedule)",
        description="Sign a new timestamp (it expires after 1 day): run daily, e.g. from "
        "cron, or devices report 'update channel stale since ...'.",
    )
    x.add_argument("dir", type=Path, help="the repository (image or director)")
    x.add_argument("--online-key", type=Path, required=True, help="the online key")
    _cmd(x, cmd_repo_timestamp)
    x = rs.add_parser("rotate", help="next root version; keys left out are revoked")
    x.add_argument("dir", type=Path, help="the repository (image or director)")
    x.add_argument(
        "--old-key",
        type=Path,
        action="append",
        required=True,
        help="current root keys, up to the current threshold; repeat",
    )
    x.add_argument(
        "--root-key",
        type=Path,
        action="append",
        required=True,
        help="root keys of the new version; repeat",
    )
    x.add_argument("--root-threshold", type=int, required=True, help="new root threshold")
    x.add_argument(
        "--targets-key",
        type=Path,
        action="append",
        required=True,
        help="targets keys of the new version; repeat",
    )
    x.add_argument("--targets-threshold", type=int, required=True, help="new targets threshold")
    x.add_argument(
        "--online-key",
        type=Path,
        required=True,
        help="online key of the new version (snapshot, timestamp)",
    )
    _cmd(x, cmd_repo_rotate)
    x = rs.add_parser(
        "resign",
        help="re-sign the current targets, snapshot and timestamp (after a rotation)",
        description="Publish the same targets as a new version signed by the newest root's "
        "targets keys, with a new snapshot and timestamp: needed after `rotate` replaced the "
        "targets or online keys (`rotate` says so), before devices next refresh.",
    )
    x.add_argument("dir", type=Path, help="the repository (image or director)")
    x.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        help="targets key of the newest root (a director: its online key); repeat",
    )
    x.add_argument("--online-key", type=Path, required=True, help="the newest online key")
    _cmd(x, cmd_repo_resign)


def _add_director_serve_hint(sub: Any) -> None:
    d = sub.add_parser("director", help="say which target groups/devices run")
    ds = d.add_subparsers(dest="director_command", required=True)
    x = ds.add_parser(
        "set",
        help="direct groups/devices to a released target",
        description="Sign the director's targets so the named groups and devices run this "
        "image target; they leave any other target of the same model. A device-specific "
        "direction wins over its group's.",
    )
    x.add_argument("dir", type=Path, help="the director repository")
    x.add_argument("--image", type=Path, required=True, help="the image repository")
    x.add_argument("--target", required=True, help="target path, as `repo add` printed it")
    x.add_argument("--group", action="append", default=[], help="an `ota.group`; repeat")
    x.add_argument("--device", action="append", default=[], help="a device_id; repeat")
    x.add_argument("--online-key", type=Path, required=True, help="the director's online key")
    _cmd(x, cmd_director_set)

    x = sub.add_parser(
        "serve",
        help="serve a repository directory over HTTP (tests, small sites)",
        description="Serve DIR's files read-only over plain HTTP until Ctrl-C. The "
        "metadata is signed, so any web server or object store does as well; put TLS in "
        "front for privacy. Devices take the printed URL as ota.image_url/director_url.",
    )
    x.add_argument("dir", type=Path, help="the repository directory (image or director)")
    x.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    x.add_argument("--port", type=int, default=8080, help="TCP port (8080; 0: any free)")
    x.add_argument("--for", dest="serve_for", type=float, metavar="S", help="stop after S s")
    _cmd(x, cmd_serve)

    x = sub.add_parser("hint", help="tell a group to refresh its update channel now (MQTT)")
    add_broker_arguments(x)
    x.add_argument("--prefix", default=DEFAULT_PREFIX)
    x.add_argument("--group", action="append", required=True)
    _cmd(x, cmd_hint)
