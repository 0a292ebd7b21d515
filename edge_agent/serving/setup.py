"""Build the endpoint from the agent's parts (the one place serving meets the agent)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError
from edge_agent.profiles import Profile
from edge_agent.resources import find_resource_dir
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import SchedulerSet
from edge_agent.serving.http import Endpoint
from edge_agent.serving.models import Catalogue, Scorer, StreamView

if TYPE_CHECKING:
    from edge_agent.streams import StreamRuntime

__all__ = ["open_endpoint"]


def open_endpoint(
    cfg: AgentConfig,
    profile: Profile,
    *,
    pool: ModelPool,
    schedulers: SchedulerSet,
    streams: Sequence[StreamRuntime],
    ready: Callable[[], bool],
) -> Endpoint:
    """The bound endpoint for `cfg.serving` (not yet serving: run it supervised).
    Raises ConfigError / ServingError (see Endpoint)."""
    models_dir = Path(cfg.models_dir) if cfg.models_dir else find_resource_dir("models")
    if models_dir is None:
        raise ConfigError("[serving]: no models directory found (set models_dir)")

    def stream_view(name: str) -> StreamView | None:
        for s in streams:
            if s.name == name:
                return StreamView(s.pipeline.model, s.pipeline.threshold)
        return None

    catalogue = Catalogue(models_dir, profile, Path(cfg.state_dir))
    scorer = Scorer(catalogue, pool, schedulers, stream_view)
    return Endpoint(cfg.serving, catalogue, scorer, ready)
