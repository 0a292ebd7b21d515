"""A stream's sensor health follows its source runner: only a running source is
connected again. A stop (or a failure) that caught the source reconnecting wrote
"disconnected ended: source reconnected" to the event history, though it never came
back."""

from __future__ import annotations

import pytest

from edge_agent.sources.runner import SourceState
from edge_agent.streams import source_connected


def test_only_running_and_reconnecting_say_anything_about_the_device() -> None:
    assert source_connected(SourceState.RUNNING) is True
    assert source_connected(SourceState.RECONNECTING) is False


@pytest.mark.parametrize(
    "state",
    [SourceState.STARTING, SourceState.STOPPED, SourceState.FAILED, SourceState.FINISHED],
)
def test_a_stop_or_failure_is_not_a_reconnect(state: SourceState) -> None:
    assert source_connected(state) is None
