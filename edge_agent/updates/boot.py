"""Start-up: which model a stream serves, the OTA slot's or the bundled one.

After `SlotStore.recover`, a stream whose model family matches the active slot's manifest
serves the slot's model (re-verified: hash, load, golden vectors). If it fails, the
previous slot (if intact) or the bundled model serves, and the store records the fall
back, so a bad slot can never put the agent into a crash loop. A damaged `slots.json` is
moved aside: the bundled model serves and status says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edge_agent.errors import EdgeAgentError, StateError
from edge_agent.profiles import Profile
from edge_agent.runtime.card import load_card
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.updates.seal import SealTrust
from edge_agent.updates.store import SlotStore

__all__ = ["SlotBoot"]

log = logging.getLogger(__name__)


@dataclass
class SlotBoot:
    """Loads each stream's model at start; remembers what happened for status."""

    store: SlotStore
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # stream -> "slot a" / "bundled"

    @classmethod
    def open(
        cls, state_dir: Path, now: datetime | None = None, trust: SealTrust | None = None
    ) -> SlotBoot:
        """Never refuses to start: a damaged slots.json is moved aside and the bundled
        model serves (with a note for status) rather than no model at all. With an
        anchored `trust`, each slot is re-checked against the signed evidence it was
        installed with (`edge_agent.updates.seal`): a slot changed on disk never serves."""
        notes = []
        try:
            store = SlotStore(state_dir, trust)
        except StateError as e:
            if isinstance(e.__cause__, PermissionError):
                raise  # not damage: the file is intact, and needs its owner fixed
            moved = SlotStore.quarantine(Path(state_dir))
            why = (
                f"slot state damaged ({e}); moved to {moved.name}, the bundled model serves "
                "until the next update"
            )
            log.error("OTA: %s", why)
            notes.append(why)
            store = SlotStore(state_dir, trust)
        report = store.recover(now or datetime.now(timezone.utc))
        boot = cls(store, notes)
        for a in report.actions:
            boot.notes.append(f"recovery: {a}")
            log.warning("OTA slots recovery: %s", a)
        return boot

    def load(self, bundled_dir: Path, profile: Profile, stream: str = "") -> LoadedModel:
        """The model `stream` should serve: the active slot's if it is of the same family."""
        family = load_card(bundled_dir, verify_hash=False).family
        while True:
            slot = self.store.state.active
            m = self.store.active_manifest()
            d = self.store.active_dir()
            if slot is None or m is None or d is None or m.family != family:
                break
            try:
                model = load_model(d, profile)
            except EdgeAgentError as e:
                why = f"slot {slot.value} (v{m.version}) does not load: {e}"
                done = self.store.fall_back(why, datetime.now(timezone.utc))
                self.notes.append(f"{why}; {done}")
                log.error("%s; %s", why, done)
                continue  # try the previous slot, else the bundled model
            self.sources[stream] = f"slot {slot.value}"
            log.info("stream %s serves OTA slot %s: %s", stream, slot.value, model.description)
            return model
        self.sources[stream] = "bundled"
        return load_model(bundled_dir, profile)
