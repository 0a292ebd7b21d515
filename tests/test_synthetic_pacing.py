"""The demo source in real time hands a block out when its last sample is due: not
before (no sample from the future), and not a sample period after (every event of the
demo would come that much late; sample-to-subscriber latency is measured on it)."""

from __future__ import annotations

import time

from edge_agent.sources.synthetic import Options, SyntheticSource


def test_a_real_time_block_comes_when_its_last_sample_is_due() -> None:
    # 1 Hz, 2 samples a block: the last sample is due 1 s after the first; handed out
    # a period later it would be due at 2 s, beyond the 1.5 s this read may wait
    src = SyntheticSource("demo", Options(rate_hz=1.0, block=2, speed=1.0, anomalies=False))
    src.open()
    blk = src.read(1.5)
    assert blk is not None, "the block was not handed out when its last sample was due"
    assert blk.time_of(len(blk.samples) - 1) <= time.time()
    assert blk.seq == 0
    assert len(blk.samples) == 2
