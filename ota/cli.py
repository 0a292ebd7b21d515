"""`edge-ota`: the operator tool for keys, roots and signed model bundles.

Exit codes: 0 success, 1 failure (a refused bundle, a failed publish), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from edge_agent import __version__ as agent_version
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.fsutil import atomic_write_bytes, sha256_file
from ota.announce import DEFAULT_PREFIX, Announcement, device_topic, fleet_topic
from ota.broker_args import add_broker_arguments, target_from_args
from ota.bundle import add_signatures, read_header, write_bundle
from ota.canonical import canonical_bytes, format_time, parse_json_object, parse_time
from ota.cli_fleet import add_fleet_commands
from ota.cli_repo import add_repo_commands
from ota.cli_rollout import add_rollout_commands
from ota.errors import BundleFormatError, KeyFileError
from ota.keys import generate_keypair_files, load_private_key, load_public_key
from ota.root import Root, SignedRoot, trust_root, verify_rotation
from ota.signing import sign_bytes
from ota.unpack import check_payload
from ota.verify import NO_INSTALLED_VERSION, verify

__all__ = ["main"]

log = logging.getLogger(__name__)
_RELATIVE = re.compile(r"^(\d+)([dhm])$")


class UsageError(EdgeAgentError):
    """A command-line value is invalid (exit 2)."""


def _time_arg(text: str, now: datetime) -> datetime:
    """`2030-01-01T00:00:00Z` or a duration from now: `90d`, `12h`, `30m`."""
    m = _RELATIVE.match(text)
    if m:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        return (now + timedelta(**{unit: int(m.group(1))})).replace(microsecond=0)
    try:
        return parse_time(text, "time")
    except BundleFormatError as e:
        raise UsageError(f"{text!r}: expected 2030-01-01T00:00:00Z or 90d / 12h / 30m") from e


def _now(args: argparse.Namespace) -> datetime:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    given = getattr(args, "now", None)
    return now if given is None else _time_arg(given, now)


def _read_root(path: Path) -> SignedRoot:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read root document: {e.strerror or e}") from e
    return SignedRoot.from_bytes(data)


def _bundle_path(path: Path) -> Path:
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such bundle file")
    return Path(path)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


# --- keys and roots ---------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    priv, pub, keyid = generate_keypair_files(args.out, args.name)
    _emit(
        args,
        {"keyid": keyid, "private": str(priv), "public": str(pub)},
        f"key {keyid}\n  private {priv} (0600, keep offline)\n  public  {pub}",
    )
    return 0


def _root_from_keys(args: argparse.Namespace, version: int) -> SignedRoot:
    keys = {k.keyid: k for k in (load_public_key(p) for p in args.key)}
    try:
        root = Root(version, _time_arg(args.expires, _now(args)), args.threshold, keys)
    except BundleFormatError as e:
        raise UsageError(str(e)) from e
    return SignedRoot(root)


def cmd_root_init(args: argparse.Namespace) -> int:
    doc = _root_from_keys(args, 1)
    atomic_write_bytes(args.out, doc.to_bytes())
    print(f"root v1 ({len(doc.root.keys)} keys, threshold {doc.root.threshold}) -> {args.out}")
    print("unsigned: sign it with `edge-ota root sign` using a threshold of its keys")
    return 0


def cmd_root_rotate(args: argparse.Namespace) -> int:
    old = _read_root(args.old)
    doc = _root_from_keys(args, old.root.version + 1)
    atomic_write_bytes(args.out, doc.to_bytes())
    print(f"root v{doc.root.version} -> {args.out}")
    print(
        f"unsigned: sign it with {old.root.threshold} of the OLD root's keys and "
        f"{doc.root.threshold} of its own (`edge-ota root sign`)"
    )
    return 0


def cmd_root_sign(args: argparse.Namespace) -> int:
    doc = _read_root(args.root)
    for path in args.key:
        doc = doc.sign(load_private_key(path))
    atomic_write_bytes(args.root, doc.to_bytes())
    print(f"root v{doc.root.version}: {len(doc.signatures)} signature(s)")
    return 0


def cmd_root_verify(args: argparse.Namespace) -> int:
    doc = _read_root(args.root)
    now = _now(args)
    if args.trusted is not None:
        root = verify_rotation(trust_root(_read_root(args.trusted), now), doc, now)
        print(f"OK: root v{root.version} is a valid successor of {args.trusted}")
    else:
        root = trust_root(doc, now)
        print(f"OK: root v{root.version}, {len(root.keys)} keys, threshold {root.threshold}")
    return 0


# --- bundles ----------------------------------------------------------------------------


def cmd_build(args: argparse.Namespace) -> int:
    from ota.build import check_golden, plan_bundle  # model cards, runtime: only for build

    if args.allow_downgrade:
        raise UsageError(
            "--allow-downgrade no longer exists: devices never install a version at or below "
            "their installed one. To go back to an old model, copy its directory, raise the "
            "card's version above every released one and build that (a roll forward)"
        )
    now = _now(args)
    plan = plan_bundle(
        args.model_dir,
        profiles=args.profiles,
        created=now,
        expires=_time_arg(args.expires, now),
        min_agent_version=args.min_agent_version,
        version=args.version,
    )
    ran = check_golden(args.model_dir)  # as every device will, before a bundle exists
    write_bundle(args.out, plan.manifest, plan.sources)
    m = plan.manifest
    print(f"golden vectors reproduce on {ran}")
    print(f"built {m.name} v{m.version} for {', '.join(m.profiles)} -> {args.out} (unsigned)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    bundle = _bundle_path(args.bundle)
    header = read_header(bundle)
    sigs = add_signatures(
        bundle, [sign_bytes(load_private_key(p), header.manifest_bytes) for p in args.key]
    )
    print(f"{bundle}: {len(sigs)} signature(s): {', '.join(s.keyid[:12] for s in sigs)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    bundle = _bundle_path(args.bundle)
    now = _now(args)
    root = trust_root(_read_root(args.root), now)
    header = read_header(bundle)
    vm = verify(
        header.manifest_bytes,
        header.signatures,
        root,
        args.installed_version,
        args.profile,
        now,
        agent_version=args.agent_version,
    )
    check_payload(bundle, vm)
    m = vm.manifest
    _emit(
        args,
        {
            "valid": True,
            "name": m.name,
            "version": m.version,
            "profiles": list(m.profiles),
            "signers": list(vm.signer_keyids),
            "root_version": vm.root_version,
        },
        f"OK: {m.name} v{m.version} ({m.label}) signed by "
        f"{', '.join(k[:12] for k in vm.signer_keyids)} (root v{vm.root_version})",
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    header = read_header(_bundle_path(args.bundle))
    m = header.manifest
    lines = [
        f"{m.name} v{m.version} ({m.label}), family {m.family}, format {m.format}",
        f"  profiles: {', '.join(m.profiles)}; min agent {m.min_agent_version}",
        f"  created {format_time(m.created)}, expires {format_time(m.expires)}",
        *(f"  {f.path}  {f.size} bytes  sha256 {f.sha256}" for f in m.files),
        f"  signatures ({len(header.signatures)}): "
        + (", ".join(s.keyid[:12] for s in header.signatures) or "none"),
        "  (not verified: use `edge-ota verify` with a root)",
    ]
    if m.allow_downgrade:
        lines.insert(3, "  allow_downgrade: true (an old override field: devices ignore it)")
    _emit(
        args,
        {"manifest": m.to_dict(), "signatures": [s.to_dict() for s in header.signatures]},
        "\n".join(lines),
    )
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from ota.publish import publish_retained
    from ota.serve import start_server

    bundle = _bundle_path(args.bundle)
    if not args.group and not args.device:
        raise UsageError("publish needs --group and/or --device")
    if (args.url is None) == (args.serve is None):
        raise UsageError("publish needs exactly one of --url URL or --serve PORT")
    header = read_header(bundle)
    header.manifest  # noqa: B018 - refuse to announce something that is not a manifest
    manifest_obj = parse_json_object(header.manifest_bytes, "manifest")
    if canonical_bytes(manifest_obj) != header.manifest_bytes:
        raise BundleFormatError(f"{bundle}: manifest is not canonical JSON; rebuild it")
    server = None
    url = args.url
    if args.serve is not None:
        server = start_server({bundle.name: bundle}, args.serve_host, args.serve)
        url = server.url(bundle.name)
    try:
        ann = Announcement(
            manifest=manifest_obj,
            signatures=header.signatures,
            url=url,
            size=bundle.stat().st_size,
            sha256=sha256_file(bundle),
            ts=_now(args),
        )
        topics = [fleet_topic(g, args.prefix) for g in args.group] + [
            device_topic(d, args.prefix) for d in args.device
        ]
        publish_retained(target_from_args(args), [(t, ann.to_payload()) for t in topics])
        for t in topics:
            print(f"announced {url} on {t} (retained)", flush=True)
        if server is not None:
            print(f"serving {bundle} at {url}", flush=True)
            deadline = None if args.serve_for is None else time.monotonic() + args.serve_for
            try:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.2 if deadline is None else min(0.2, deadline - time.monotonic()))
            except KeyboardInterrupt:
                pass
    finally:
        if server is not None:
            server.close()
    return 0


# --- parser -----------------------------------------------------------------------------


def _add_keygen(sub: Any) -> None:
    s = sub.add_parser("keygen", help="create an Ed25519 key pair")
    s.add_argument("--out", type=Path, required=True, help="directory for NAME.key / NAME.pub")
    s.add_argument("--name", default="ota", help="file name stem (default: ota)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_keygen)


def _add_root(sub: Any) -> None:
    r = sub.add_parser("root", help="create, sign, rotate and check root documents")
    rsub = r.add_subparsers(dest="root_command", required=True)

    def key_opts(x: argparse.ArgumentParser) -> None:
        x.add_argument("--key", type=Path, action="append", required=True, help="public key")
        x.add_argument("--threshold", type=int, required=True)
        x.add_argument("--expires", required=True, help="2030-01-01T00:00:00Z or 365d")
        x.add_argument("--out", type=Path, required=True)

    x = rsub.add_parser("init", help="a first root (version 1), unsigned")
    key_opts(x)
    x.set_defaults(func=cmd_root_init)
    x = rsub.add_parser("rotate", help="the next root version, unsigned")
    x.add_argument("old", type=Path, help="the currently trusted root")
    key_opts(x)
    x.set_defaults(func=cmd_root_rotate)
    x = rsub.add_parser("sign", help="add signatures to a root")
    x.add_argument("root", type=Path)
    x.add_argument("--key", type=Path, action="append", required=True, help="private key")
    x.set_defaults(func=cmd_root_sign)
    x = rsub.add_parser("verify", help="check a root (or a rotation with --trusted)")
    x.add_argument("root", type=Path)
    x.add_argument("--trusted", type=Path, help="the old root this one must succeed")
    x.add_argument("--now", help="evaluate expiry at this time (default: now)")
    x.set_defaults(func=cmd_root_verify)


def _add_bundle_commands(sub: Any) -> None:
    s = sub.add_parser("build", help="build an unsigned bundle from a model directory")
    s.add_argument("model_dir", type=Path)
    s.add_argument("--version", type=int, help="must equal the card's version (checked)")
    s.add_argument("--profiles", nargs="+", required=True, help="target device profiles")
    s.add_argument("--expires", required=True, help="2030-01-01T00:00:00Z or 90d")
    s.add_argument("--min-agent-version", default=agent_version)
    s.add_argument(
        "--allow-downgrade", action="store_true", help=argparse.SUPPRESS
    )  # removed: refused with an explanation (roll forward instead)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--now", help="creation time (default: now)")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("sign", help="sign a bundle (repeat --key for a threshold)")
    s.add_argument("bundle", type=Path)
    s.add_argument("--key", type=Path, action="append", required=True, help="private key")
    s.set_defaults(func=cmd_sign)

    s = sub.add_parser("verify", help="verify a bundle as a device would")
    s.add_argument("bundle", type=Path)
    s.add_argument("--root", type=Path, required=True)
    s.add_argument("--installed-version", type=int, default=NO_INSTALLED_VERSION)
    s.add_argument("--profile", help="device profile (omit to skip the profile check)")
    s.add_argument("--agent-version", help="agent version (omit to skip)")
    s.add_argument("--now", help="evaluate expiry at this time (default: now)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("inspect", help="show a bundle's manifest and signers (unverified)")
    s.add_argument("bundle", type=Path)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)


def _add_publish(sub: Any) -> None:
    s = sub.add_parser("publish", help="announce a bundle over MQTT (retained)")
    s.add_argument("bundle", type=Path)
    add_broker_arguments(s)
    s.add_argument("--prefix", default=DEFAULT_PREFIX)
    s.add_argument("--group", action="append", default=[], help="fleet group (repeatable)")
    s.add_argument("--device", action="append", default=[], help="device id (repeatable)")
    s.add_argument("--url", help="where devices fetch the bundle (file://, http(s)://)")
    s.add_argument("--serve", type=int, metavar="PORT", help="serve the bundle over HTTP")
    s.add_argument("--serve-host", default="127.0.0.1", help="address for --serve")
    s.add_argument("--serve-for", type=float, metavar="S", help="stop serving after S seconds")
    s.set_defaults(func=cmd_publish)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-ota", description="Signed OTA model bundles.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)
    _add_keygen(sub)
    _add_root(sub)
    _add_bundle_commands(sub)
    _add_publish(sub)
    add_repo_commands(sub)
    add_fleet_commands(sub)
    add_rollout_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code) if isinstance(e.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (UsageError, KeyFileError, ConfigError) as e:
        print(f"edge-ota: error: {e}", file=sys.stderr)
        return 2
    except EdgeAgentError as e:
        print(f"edge-ota: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # hostile files must never produce a traceback
        log.debug("unexpected error", exc_info=True)
        print(
            f"edge-ota: unexpected {type(e).__name__}: {e} (run with -v for details; "
            "please report it)",
            file=sys.stderr,
        )
        return 1
