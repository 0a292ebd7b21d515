"""The director repository's side of a rollout: read what a group and its devices are
directed to now, direct a wave's devices, restore them, and hand the target to the group.

Each change is one signed director publish (targets, snapshot, timestamp; online key).
Entries are the director's target entries for one model name (`custom.edge.name`), as
`ota.tufrepo.direct` writes them: a device's own entry wins over its group's on the
device (edge_agent/updates/channel.py), so a wave is its devices' own entries and the
group's entry is left alone until the rollout completes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from tuf.api.metadata import Metadata, TargetFile, Targets

from ota.keys import PrivateKey
from ota.tufrepo import Repository, RepositoryError, direct, sslib_key, target_custom

__all__ = [
    "check_online_key",
    "complete_group",
    "device_entries",
    "direct_devices",
    "group_entry",
    "image_target",
    "restore_devices",
]


def check_online_key(director: Repository, key: PrivateKey) -> None:
    """RepositoryError unless `key` alone can publish the director (a rollout signs its
    targets, snapshot and timestamp with it): checked against the director's root before
    a rollout records anything, so a wrong key changes nothing."""
    root = director.root().signed
    keyid = sslib_key(key.public).keyid
    for role in ("targets", "snapshot", "timestamp"):
        r = root.roles[role]
        if keyid not in r.keyids or r.threshold != 1:
            why = "is not one of its keys" if keyid not in r.keyids else (
                f"needs {r.threshold} signatures"
            )  # fmt: skip
            raise RepositoryError(
                f"{director.path}: --online-key {keyid[:12]}... cannot sign the director's "
                f"{role} role ({why}): give the director's online key (the one "
                "`edge-ota repo init --kind director` was given), not the image repository's"
            )


def image_target(image: Repository, path: str) -> dict[str, Any]:
    """The image entry's `custom.edge` (name, family, version); RepositoryError if the
    image repository does not list `path`."""
    tf = image.targets().signed.targets.get(path)
    if tf is None:
        raise RepositoryError(f"{path}: not in the image repository {image.path}")
    edge = target_custom(tf)
    if not isinstance(edge.get("version"), int) or not edge.get("name"):
        raise RepositoryError(f"{path}: the image entry carries no model name and version")
    return edge


def _same_name(md: Metadata[Targets], name: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (p, target_custom(tf))
        for p, tf in sorted(md.signed.targets.items())
        if target_custom(tf).get("name") == name
    ]


def group_entry(director: Repository, name: str, group: str) -> dict[str, Any] | None:
    """The group's current direction for model `name`: {"path", "version"} or None."""
    for path, edge in _same_name(director.targets(), name):
        if group in (edge.get("groups") or []):
            v = edge.get("version")
            return {"path": path, "version": v if isinstance(v, int) else None}
    return None


def device_entries(director: Repository, name: str, devices: Sequence[str]) -> dict[str, str]:
    """Each device's own entry for model `name`, where it has one."""
    out: dict[str, str] = {}
    for path, edge in _same_name(director.targets(), name):
        for d in edge.get("devices") or []:
            if d in devices:
                out[str(d)] = path
    return out


def direct_devices(
    director: Repository,
    image: Repository,
    *,
    target: str,
    devices: Sequence[str],
    online: PrivateKey,
    now: datetime,
) -> None:
    """Idempotent: directing the same devices again publishes the same entries."""
    direct(director, image, target, online, now, devices=devices)


def _put(
    entries: dict[str, TargetFile], image: Repository, path: str, edge: dict[str, Any]
) -> None:
    """Write (or drop, when it directs nobody) the entry `path` with `edge`'s groups and
    devices, the rest of it from the image repository's entry."""
    groups, devices = sorted(set(edge.get("groups") or [])), sorted(set(edge.get("devices") or []))
    if not groups and not devices:
        entries.pop(path, None)
        return
    current = entries.get(path)
    if current is None:
        img = image.targets().signed.targets.get(path)
        if img is None:
            raise RepositoryError(f"{path}: not in the image repository {image.path} any more")
        current = TargetFile(img.length, dict(img.hashes), path, {})
        base = target_custom(img)
    else:
        base = target_custom(current)
    current.unrecognized_fields["custom"] = {"edge": {**base, "groups": groups, "devices": devices}}
    entries[path] = current


def restore_devices(
    director: Repository,
    image: Repository,
    *,
    target: str,
    prev_entries: Mapping[str, str | None],
    online: PrivateKey,
    now: datetime,
    group: str | None = None,
    group_prev: str | None = None,
) -> None:
    """Take the devices off `target`'s entry and give back each one's own previous entry
    (devices that had none follow their group's entry again), in one publish. If `group`
    is on `target`'s entry (a driver died after handing the target to the group, before it
    recorded that), the group goes back to `group_prev` (or to no entry) too."""
    md = director.targets()
    entries = md.signed.targets
    cur = entries.get(target)
    handed = False
    if cur is not None:
        edge = target_custom(cur)
        edge["devices"] = [d for d in edge.get("devices") or [] if d not in prev_entries]
        handed = group is not None and group in (edge.get("groups") or [])
        if handed:
            edge["groups"] = [g for g in edge["groups"] if g != group]
        _put(entries, image, target, edge)
    back: dict[str, tuple[list[str], list[str]]] = {}
    for dev, path in sorted(prev_entries.items()):
        if path is not None and path != target:
            back.setdefault(path, ([], []))[1].append(dev)
    if handed and group is not None and group_prev is not None and group_prev != target:
        back.setdefault(group_prev, ([], []))[0].append(group)
    for path, (groups, devices) in back.items():
        edge = target_custom(entries[path]) if path in entries else {}
        edge["groups"] = [*(edge.get("groups") or []), *groups]
        edge["devices"] = [*(edge.get("devices") or []), *devices]
        _put(entries, image, path, edge)
    director.publish_targets(md, [online], online, now)


def complete_group(
    director: Repository,
    image: Repository,
    *,
    target: str,
    name: str,
    group: str,
    devices: Sequence[str],
    online: PrivateKey,
    now: datetime,
) -> None:
    """The group's entry becomes `target` (it leaves any other entry of model `name`) and
    the rollout's own device entries are dropped: the group entry covers them. One publish."""
    md = director.targets()
    entries = md.signed.targets
    for path, edge in _same_name(md, name):
        if path == target:
            continue
        if group in (edge.get("groups") or []):
            edge["groups"] = [g for g in edge["groups"] if g != group]
            _put(entries, image, path, edge)
    edge = target_custom(entries[target]) if target in entries else {}
    edge["groups"] = [*(edge.get("groups") or []), group]
    edge["devices"] = [d for d in edge.get("devices") or [] if d not in devices]
    _put(entries, image, target, edge)
    director.publish_targets(md, [online], online, now)
