"""`rollout start` must refuse durations that make no sense as usage errors (exit 2),
before it reads the broker or touches the director.

Found with real agents: `rollout start --waves 100% --wave-deadline 0` was accepted,
directed all four devices, judged each of them "not reporting: no success within the
wave deadline of 0 s" at the first poll and halted (exit 3), while every device went on
to install the target it had just been directed to. The `abort` that followed waited the
rollout's deadline, 0 s, and recorded all four as `not_restored` though each was rolled
back a second later. `--poll 0` is accepted the same way (the driver then re-reads the
whole fleet's retained state back to back). docs/fleet.md: "Durations take `30s`, `10m`,
`2h`, `1d` or plain seconds"; a negative one is already refused (exit 2).

The CLI runs in a real subprocess; the director does not exist, so nothing can be
written whatever the outcome, and a usage error must be reported before that is found.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.agentutil import REPO


@pytest.mark.parametrize(
    ("option", "value"), [("--wave-deadline", "0"), ("--wave-deadline", "0s"), ("--poll", "0")]
)
def test_a_zero_deadline_or_poll_is_a_usage_error(tmp_path: Path, option: str, value: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "ota", "rollout", "start",
         "--director", str(tmp_path / "director"), "--image", str(tmp_path / "image"),
         "--online-key", str(tmp_path / "d.key"), "--group", "line-1",
         "--target", "vibration-ae/vibration-ae-v2.bundle", "--waves", "1,100%",
         "--port", "1", option, value],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2, p.stdout + p.stderr
    assert option in p.stderr, p.stderr
    assert not (tmp_path / "director.rollouts").exists()
