"""`edge-ota repo ...`, `edge-ota director set`, `edge-ota serve`, `edge-ota hint`: the
TUF image and director repositories (see ota/tufrepo.py and docs/ota.md).

python-tuf is imported inside the commands only: the bundle commands do not need it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ota.announce import DEFAULT_PREFIX, fleet_topic
from ota.broker_args import add_broker_arguments, target_from_args
from ota.keys import PrivateKey, load_private_key, load_public_key

__all__ = ["add_repo_commands"]

HINT_VERSION = 1


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
        args.dir, keys, root_signers=roots, targets_signers=targets_signers, online=online,
        now=_now(),
    )  # fmt: skip
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
        [k.public for k in new_roots], args.root_threshold,
        [load_public_key(p) for p in args.targets_key], args.targets_threshold,
        load_public_key(args.online_key),
    )  # fmt: skip
    v = Repository(args.dir).rotate_root(
        keys, old_signers=_privs(args.old_key), new_signers=new_roots, now=_now()
    )
    print(f"root v{v} written; keys left out are revoked")
    return 0


def cmd_director_set(args: argparse.Namespace) -> int:
    from ota.tufrepo import Repository, direct

    tf = direct(
        Repository(args.dir), Repository(args.image), args.target,
        load_private_key(args.online_key), _now(), groups=args.group, devices=args.device,
    )  # fmt: skip
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

    body = json.dumps({"v": HINT_VERSION, "hint": "refresh", "ts": _now().isoformat()}).encode()
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
    r = sub.add_parser("repo", help="TUF image/director repositories: init, add, timestamp, rotate")
    rs = r.add_subparsers(dest="repo_command", required=True)
    x = rs.add_parser("init", help="create a repository (root v1, empty targets)")
    x.add_argument("dir", type=Path)
    x.add_argument("--kind", choices=["image", "director"], required=True)
    x.add_argument("--root-key", type=Path, action="append", required=True, help="offline")
    x.add_argument("--root-threshold", type=int, default=1)
    x.add_argument("--targets-key", type=Path, action="append", help="image: offline keys")
    x.add_argument("--targets-threshold", type=int, default=1)
    x.add_argument("--online-key", type=Path, required=True, help="snapshot+timestamp key")
    _cmd(x, cmd_repo_init)
    x = rs.add_parser("add", help="release a bundle into an image repository")
    x.add_argument("dir", type=Path)
    x.add_argument("bundle", type=Path)
    x.add_argument("--key", type=Path, action="append", required=True, help="targets keys")
    x.add_argument("--online-key", type=Path, required=True)
    _cmd(x, cmd_repo_add)
    x = rs.add_parser("timestamp", help="sign a fresh timestamp (run on a schedule)")
    x.add_argument("dir", type=Path)
    x.add_argument("--online-key", type=Path, required=True)
    _cmd(x, cmd_repo_timestamp)
    x = rs.add_parser("rotate", help="next root version; keys left out are revoked")
    x.add_argument("dir", type=Path)
    x.add_argument("--old-key", type=Path, action="append", required=True, help="old root keys")
    x.add_argument("--root-key", type=Path, action="append", required=True, help="new root keys")
    x.add_argument("--root-threshold", type=int, required=True)
    x.add_argument("--targets-key", type=Path, action="append", required=True)
    x.add_argument("--targets-threshold", type=int, required=True)
    x.add_argument("--online-key", type=Path, required=True)
    _cmd(x, cmd_repo_rotate)


def _add_director_serve_hint(sub: Any) -> None:
    d = sub.add_parser("director", help="say which target groups/devices run")
    ds = d.add_subparsers(dest="director_command", required=True)
    x = ds.add_parser("set", help="direct groups/devices to a released target")
    x.add_argument("dir", type=Path)
    x.add_argument("--image", type=Path, required=True, help="the image repository")
    x.add_argument("--target", required=True, help="target path, as `repo add` printed it")
    x.add_argument("--group", action="append", default=[])
    x.add_argument("--device", action="append", default=[])
    x.add_argument("--online-key", type=Path, required=True)
    _cmd(x, cmd_director_set)

    x = sub.add_parser("serve", help="serve a repository directory over HTTP (tests, small sites)")
    x.add_argument("dir", type=Path)
    x.add_argument("--host", default="127.0.0.1")
    x.add_argument("--port", type=int, default=8080)
    x.add_argument("--for", dest="serve_for", type=float, metavar="S", help="stop after S s")
    _cmd(x, cmd_serve)

    x = sub.add_parser("hint", help="tell a group to refresh its update channel now (MQTT)")
    add_broker_arguments(x)
    x.add_argument("--prefix", default=DEFAULT_PREFIX)
    x.add_argument("--group", action="append", required=True)
    _cmd(x, cmd_hint)
