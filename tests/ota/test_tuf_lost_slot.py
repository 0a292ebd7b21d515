"""A device whose committed slot is lost (files deleted or damaged, so the start-up check
drops it and an older model serves) reinstalls the very target the director still
names -- same signed identity, same version -- without weakening anti-rollback: it
still refuses anything below its committed version, and a target it rolled back for
cause stays refused. Real image and director repositories over real HTTP (tufrig),
python-tuf's ngclient, the real updater, slot store and start-up check."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import Env
from otamodels import copy_model, nan_model
from rig import Rig, make_bundle, make_rig
from tufrig import Repos, make_repos

from edge_agent.updates.boot import SlotBoot
from edge_agent.updates.channel import UpdateChannel
from edge_agent.updates.seal import SealTrust
from edge_agent.updates.slots import Slot


def _state(env: Env) -> Path:
    return env.tmp / "state"


@contextmanager
def _device(env: Env, repos: Repos) -> Iterator[Rig]:
    """One start of the device: the start-up check (SlotBoot.open, with the channel's
    trust anchors, as the agent does), then the updater on that store."""
    trust = SealTrust(
        image_root_file=repos.image.meta / "1.root.json",
        image_meta_dir=_state(env) / "ota" / "tuf" / "image",
    )
    boot = SlotBoot.open(_state(env), trust=trust)
    channel = UpdateChannel(repos.channel(), _state(env))
    with make_rig(env, channel=channel, store=boot.store) as rig:
        yield rig


def _release(env: Env, repos: Repos, version: int, model: Path | None = None) -> str:
    d = model or copy_model(env.tmp / f"model-v{version}", version)
    return repos.release(make_bundle(env, d, f"vib-v{version}.bundle"))


def _lose(env: Env, slot: Slot) -> None:
    """The slot's files are gone (a bad SD card, a wrong `rm`): state still names it."""
    shutil.rmtree(_state(env) / "slots" / slot.value)


def _slot_files(env: Env) -> dict[str, bytes]:
    root = _state(env) / "slots"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_lost_committed_slot_is_reinstalled_from_the_same_directed_target(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        v2 = _release(env, repos, 2)
        repos.direct(v2)
        with _device(env, repos) as rig:
            assert rig.updater.check_channel() == "committed", rig.published[-1]
        _lose(env, Slot.A)
        with _device(env, repos) as rig:
            st = rig.updater.store.state
            assert (st.active, st.highest_committed_version) == (None, 2)  # bundled serves
            assert rig.pipeline.model.card.version == 1
            # The director still names v2 (same hashes): it is installed again.
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            assert "restor" in rig.published[0]["detail"], rig.published[0]
            assert rig.pipeline.model.card.version == 2
            st = rig.updater.store.state
            assert (st.active_version, st.committed, st.highest_committed_version) == (2, True, 2)
            assert rig.updater.store.check_slot(Slot.A) is None
            # Once restored it serves it: nothing more to do.
            assert rig.updater.check_channel() == "idle"


def test_lost_slot_does_not_open_the_way_below_the_committed_version(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        v2 = _release(env, repos, 2)
        repos.direct(v2)
        with _device(env, repos) as rig:
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            v3 = _release(env, repos, 3)
            repos.direct(v3)
            assert rig.updater.check_channel() == "committed", rig.published[-1]
        _lose(env, Slot.A)
        _lose(env, Slot.B)
        with _device(env, repos) as rig:
            assert rig.updater.store.state.active is None
            assert rig.updater.store.state.highest_committed_version == 3
            # v2, committed here once, is below the committed v3: still a rollback.
            repos.direct(v2)
            before = _slot_files(env)
            assert rig.updater.check_channel() == "rejected"
            assert "RollbackError" in rig.published[-1]["detail"]
            assert _slot_files(env) == before
            assert rig.pipeline.model.card.version == 1
            # v3, the committed version whose slot was lost, comes back.
            repos.direct(v3)
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            assert rig.pipeline.model.card.version == 3


def test_target_rolled_back_for_cause_stays_refused_after_a_slot_is_lost(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        v2 = _release(env, repos, 2)
        repos.direct(v2)
        with _device(env, repos) as rig:
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            v3 = _release(env, repos, 3, nan_model(env.tmp / "nan-v3", 3, above=20.0))
            repos.direct(v3)
            result: list[str] = []
            t = threading.Thread(target=lambda: result.append(rig.updater.check_channel()))
            t.start()
            deadline = time.monotonic() + 60
            while rig.states.count("promoted") < 2 and time.monotonic() < deadline:
                if not t.is_alive():
                    break
                time.sleep(0.01)
            rig.feeder.gain = 50.0  # the process changes: v3 outputs NaN on trial
            t.join(60)
            assert result == ["rolled_back"], rig.published[-1]
        _lose(env, Slot.A)  # the slot v2 serves from is lost too
        with _device(env, repos) as rig:
            st = rig.updater.store.state
            assert st.active is None, st  # never the slot rolled back for cause
            before = _slot_files(env)
            # The director still names v3: rolled back here for cause, it stays refused.
            assert rig.updater.check_channel() == "idle"
            assert rig.updater.store.state.active is None
            assert _slot_files(env) == before
            assert rig.pipeline.model.card.version == 1
            assert Slot.B in rig.updater.store.state.bad  # the mark stays with its slot
            # v2, committed and lost, is what the director sends back: it is restored.
            repos.direct(v2)
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            assert rig.pipeline.model.card.version == 2
