"""The agent's OTA side at run time: boot-time slot choice, the updater, manual rollback.

The agent wires it and calls `poll_manual_rollback()` from its tick; everything about
slots, the updater and the rollback request files stays here. Request and result
files that cannot be handled (e.g. left root-owned by a `sudo` CLI) are reported in
status with the fix, never raised into the agent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.profiles import Profile
from edge_agent.updates import manual_rollback as mr

if TYPE_CHECKING:
    from edge_agent.runtime.model import LoadedModel
    from edge_agent.streams import StreamRuntime
    from edge_agent.updates.boot import SlotBoot
    from edge_agent.updates.updater import Updater

__all__ = ["OtaRuntime"]

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], None]
ErrorSink = Callable[[str, str], None]


class OtaRuntime:
    def __init__(self, cfg: AgentConfig, state_dir: Path, on_error: ErrorSink) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self._on_error = on_error
        self.boot: SlotBoot | None = None
        self.updater: Updater | None = None
        self.note = ""  # why updates are off, for status
        self.publish: Publish | None = None
        self._streams: list[StreamRuntime] = []
        # stream name -> (its model card then, where that card came from): status asks
        # each second, and resolving every directory each time was ~3 ms of the tick
        self._sources: dict[str, tuple[object, str]] = {}
        self._slot_dirs: dict[Path, str] | None = None

    def open_slots(self) -> Callable[[Path, Profile, str], LoadedModel] | None:
        """The model loader streams use at start (None: OTA off, bundled models serve).
        Creates `ota/` as the agent's user, so a CLI run as root never has to."""
        (self.state_dir / "ota").mkdir(exist_ok=True)
        if not self.cfg.ota.enabled:
            return None
        from edge_agent.updates.boot import SlotBoot
        from edge_agent.updates.seal import SealTrust

        ota = self.cfg.ota
        trust = SealTrust(
            root_file=Path(ota.root_file) if ota.root_file else None,
            image_root_file=Path(ota.image_root_file) if ota.image_root_file else None,
            image_meta_dir=self.state_dir / "ota" / "tuf" / "image",
            isolated=True,
        )
        try:
            self.boot = SlotBoot.open(self.state_dir, trust=trust)
        except EdgeAgentError as e:  # e.g. slots.json not readable by the agent's user
            self.note = f"OTA off: {e}"
            self._on_error("ota", self.note)
            log.error("%s; the bundled models serve", self.note)
            return None
        return self.boot.load

    def after_models_loaded(self, streams: Sequence[StreamRuntime], profile: Profile) -> None:
        if self.boot is None:
            return
        self._streams = list(streams)
        for note in self.boot.notes:
            self._on_error("ota", note)
        self._make_updater(streams, profile)

    def _make_updater(self, streams: Sequence[StreamRuntime], profile: Profile) -> None:
        """OTA needs trust: a root file (announcements) and/or the TUF update channel
        (image + director repositories); without either, updates are refused (and status
        says so)."""
        ota = self.cfg.ota
        channel_keys = (
            ota.image_url,
            ota.director_url,
            ota.image_root_file,
            ota.director_root_file,
        )
        if any(channel_keys) and not all(channel_keys):
            self.note = (
                "update channel needs all of ota.image_url, ota.director_url, "
                "ota.image_root_file and ota.director_root_file"
            )
            self._on_error("ota", self.note)
            return
        if not ota.root_file and not all(channel_keys):
            self.note = (
                "no update channel configured (ota.image_url, ota.director_url and their "
                "root files, docs/ota.md): updates are not accepted"
            )
            log.info("OTA: %s", self.note)
            return
        # signature checks run in trust workers: cryptography (~9 MB) is never resident
        from datetime import datetime, timezone

        from edge_agent.updates.trust_worker import load_root_isolated, verify_isolated
        from edge_agent.updates.updater import Updater, UpdateTarget

        root = None
        if ota.root_file:
            try:
                root = load_root_isolated(Path(ota.root_file), datetime.now(timezone.utc))
            except EdgeAgentError as e:
                self.note = f"trusted root unusable, updates are not accepted: {e}"
                self._on_error("ota", self.note)
                return
        channel = None
        if all(channel_keys):
            # python-tuf and cryptography only in short-lived trust workers
            from edge_agent.updates.channel_types import ChannelConfig
            from edge_agent.updates.trust_worker import IsolatedChannel

            channel = IsolatedChannel(
                ChannelConfig(
                    image_url=ota.image_url,
                    director_url=ota.director_url,
                    image_root=Path(ota.image_root_file),
                    director_root=Path(ota.director_root_file),
                    group=ota.group,
                    device=self.cfg.device_id,
                ),
                self.state_dir,
            )
        assert self.boot is not None
        self.updater = Updater(
            state_dir=self.state_dir,
            ota=ota,
            profile=profile,
            root=root,
            targets=[UpdateTarget(s.pipeline, s.config, s) for s in streams],
            publish=self._publish,
            store=self.boot.store,
            channel=channel,
            refresh_s=ota.refresh_s,
            verifier=verify_isolated,
        )

    def _publish(self, body: dict[str, Any]) -> None:
        if self.publish is not None:
            self.publish(body)

    def subscriptions(self) -> list[tuple[str, Callable[[str, bytes], None]]]:
        """(topic filter, handler) pairs the reporter should deliver to the updater."""
        if self.updater is None:
            return []
        from ota.announce import device_topic, fleet_topic

        prefix, updater = self.cfg.mqtt.prefix, self.updater
        return [
            (flt, lambda _t, payload: updater.on_announcement(payload))
            for flt in (
                fleet_topic(self.cfg.ota.group, prefix),
                device_topic(self.cfg.device_id, prefix),
            )
        ]

    # -- manual rollback (edge-agent rollback while running; see manual_rollback.py) ----
    def poll_manual_rollback(self, streams: Sequence[StreamRuntime], profile: Profile) -> None:
        """Take and answer a pending request. A request or answer the agent cannot touch
        (file permissions) is an error in status with the fix."""
        try:
            req = mr.take(self.state_dir)
            if req is None:
                return
            log.info("manual rollback requested: %s", req.reason)
            if self.boot is None:
                mr.write_result(
                    self.state_dir, req, False, "OTA is off in this agent's config (ota.enabled)"
                )
            elif self.updater is None:
                self._manual_rollback(req, streams, profile)
            elif not self.updater.call_between_updates(
                lambda: self._manual_rollback(req, streams, profile)
            ):
                mr.write_result(self.state_dir, req, False, "the updater is busy: ask again")
        except PermissionError as e:
            self._on_error(
                "ota",
                f"manual rollback: {e.filename}: permission denied; give the state dir back "
                f"to the agent's user (chown -R <agent user> {self.state_dir})",
            )

    def _manual_rollback(
        self, req: mr.Request, streams: Sequence[StreamRuntime], profile: Profile
    ) -> None:
        from datetime import datetime, timezone

        assert self.boot is not None
        served_streams = [
            mr.ServedStream(s.name, s.pipeline, s.config, s.bundled_dir) for s in streams
        ]
        try:
            before, served = mr.perform(
                self.boot, served_streams, profile, req, datetime.now(timezone.utc)
            )
        except EdgeAgentError as e:
            log.warning("manual rollback refused: %s", e)
            mr.write_result(self.state_dir, req, False, str(e))
            return
        from edge_agent.updates.calib_carry import refresh

        for s in streams:  # status shows the calibration applied to what serves now
            refresh(s, self.state_dir, s.name, s.pipeline.model.card)
        message = f"rolled back from v{before}: {served}"
        log.warning("manual rollback (%s): %s", req.reason, message)
        detail = f"manual: {req.reason}"
        if self.updater is not None:
            self.updater.report("rolled_back", before, detail)
        else:  # no updater: still tell the fleet which model serves now
            from edge_agent.reporting.payloads import ota_state_body

            try:
                self._publish(ota_state_body(state="rolled_back", version=before, detail=detail))
            except EdgeAgentError as e:
                log.warning("OTA: cannot publish the manual rollback: %s", e)
        mr.write_result(
            self.state_dir, req, True, message, pid=os.getpid(), rolled_back_from=before
        )

    # -- status -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        if self.updater is not None:
            snap = self.updater.snapshot()
        elif self.boot is not None:
            st = self.boot.store.state
            snap = {
                "enabled": False,
                "state": "off",
                "active_slot": None if st.active is None else st.active.value,
                "active_version": st.active_version,
                "last_result": st.last_result,
            }
        else:
            snap = {"enabled": False, "state": "off"}
        if self.note:
            snap["note"] = self.note
        elif self.updater is not None and self.updater.channel_note.startswith(
            ("update channel stale", "TrustStoreError")
        ):
            snap["note"] = self.updater.channel_note  # shown by `edge-agent status`
        if self.boot is not None:
            snap["model_source"] = self._model_sources()
        return snap

    def _model_sources(self) -> dict[str, str]:
        """Where each stream's model comes from now: a live promotion or rollback changes
        it after boot (read from the serving model's directory, not remembered)."""
        from edge_agent.updates.slots import Slot

        assert self.boot is not None
        out = dict(self.boot.sources)
        if self._slot_dirs is None:
            self._slot_dirs = {
                self.boot.store.slot_dir(sl).resolve(): f"slot {sl.value}" for sl in Slot
            }
        for s in self._streams:
            card = s.pipeline.model.card
            known = self._sources.get(s.name)
            if known is None or known[0] is not card:  # a promotion or rollback loads anew
                known = (card, self._slot_dirs.get(card.directory.resolve(), "bundled"))
                self._sources[s.name] = known
            out[s.name] = known[1]
        return out
