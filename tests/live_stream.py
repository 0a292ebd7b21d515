"""One real stream (synthetic source at 100 Hz without anomalies, a bundled model on the
real runtime) serving on its own thread as the agent's supervisor runs it: for tests of
what acts on a running stream from other threads (remote calibration, updates)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.config import parse_config
from edge_agent.profiles import Profile
from edge_agent.service.faults import Faults
from edge_agent.service.supervisor import Loop
from edge_agent.sources.runner import SourceState
from edge_agent.streams import StreamRuntime, StreamSinks


def wait(pred: Callable[[], bool], timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class Serving:
    """One real stream serving on its own thread, as the supervisor runs it."""

    def __init__(self, tmp: Path, profile: Profile | None = None, **stream: Any) -> None:
        cfg = parse_config(
            {
                "state_dir": str(tmp),
                "streams": [
                    {
                        "name": "line",
                        "model": "vibration-ae",
                        "source": {
                            "kind": "synthetic",
                            "rate_hz": 100.0,
                            "block": 16,
                            "first_anomaly_s": 100000.0,
                        },
                        **stream,
                    }
                ],
            }
        )
        self.state_dir = tmp
        self.rt = StreamRuntime(cfg.streams[0], cfg, profile or Profile(name="t"), None)
        self.stop = threading.Event()
        sinks = StreamSinks(lambda _e: None, lambda _h: None, lambda: None)
        loop = Loop("stream-line", self.stop, Faults({}, {}))
        self.thread = threading.Thread(target=self.rt.serve, args=(loop, sinks), daemon=True)
        self.thread.start()
        assert wait(lambda: self.rt.runner.state is SourceState.RUNNING)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.rt.stop_source(2.0)
