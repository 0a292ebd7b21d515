"""The demo signal's contract (edge_agent/sources/synth_signal.py): the same samples for
the same (seed, range) however the range is split, the normal signal and the anomalies as
the formulas give them in float64, and noise of the spec's level, fresh every sample."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal

F64 = npt.NDArray[np.float64]


def _reference(spec: SignalSpec, start: int, n: int) -> F64:
    """The signal without noise, straight from its formulas in float64 (one sin per term)."""
    t = (start + np.arange(n)) / spec.rate_hz
    w = 2 * np.pi * spec.shaft_hz * t
    load = 1.0 + 0.15 * np.sin(2 * np.pi * t / 23.0)
    x = load * (0.8 * np.sin(w) + 0.25 * np.sin(2 * w + 0.3) + 0.1 * np.sin(3 * w + 1.1))
    y = load * (0.8 * np.cos(w) + 0.2 * np.sin(2 * w + 1.7) + 0.08 * np.cos(3 * w))
    z = 0.3 * np.sin(2 * w + 0.5) + 0.05 * np.sin(5 * w)
    k = start + np.arange(n)
    cur = 4.0 * load + 0.2 * np.sin(2 * np.pi * 50.0 / spec.rate_hz * k / 3)
    out = np.stack([x, y, z, cur], axis=1)
    sig = SyntheticSignal(spec)
    for a in sig.anomalies_between(float(t[0]), float(t[-1]) + 1e-9):
        m = (t >= a.start_s) & (t < a.end_s)
        tm = t[m]
        if a.kind == "bearing":
            burst = 0.5 * np.sin(2 * np.pi * 31.0 * tm) * (1 + np.sin(2 * np.pi * 3.1 * tm))
            out[m, 0] += burst
            out[m, 1] += 0.7 * burst
            out[m, 2] += 0.4 * burst
        elif a.kind == "imbalance":
            out[m, :2] *= 1.9
        elif a.kind == "current_surge":
            out[m, 3] = out[m, 3] * 1.5 + 0.6 * np.sin(2 * np.pi * 11.0 * tm)
        else:
            out[m, 2] += 0.5 * np.sin(np.pi * spec.shaft_hz * tm)
            out[m, 0] = np.clip(out[m, 0], -0.55, 0.55)
    return out


# 100 Hz: a period table of 6,900 samples; 123.45 Hz: no short period, computed per render
RATES = [100.0, 123.45]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("start", [0, 6_890, 3_000_001])
def test_any_split_gives_the_same_samples(rate: float, start: int) -> None:
    spec = SignalSpec(seed=5, rate_hz=rate, first_anomaly_s=start / rate + 2.0)
    n = 14_000  # over two of the table's wraps, across an anomaly's edges
    whole = SyntheticSignal(spec).render(start, n)
    sig = SyntheticSignal(spec)  # one instance for all pieces: no state carried over
    for sizes in ([1, 3, 5, 7, 1023, 1025, 6899, 6901], [16] * 40 + [4093, 1], [13_999, 1]):
        parts, at = [], start
        while at < start + n:
            for want in sizes:
                size = min(want, start + n - at)
                if size:
                    parts.append(sig.render(at, size))
                    at += size
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    # another instance, after other renders, and the reversed order of pieces
    other = SyntheticSignal(spec)
    other.render(start + 77, 500)
    for a in range(start + n - 997, start - 1, -997):
        lo = max(a, start)
        np.testing.assert_array_equal(
            other.render(lo, a + 997 - lo), whole[lo - start : a + 997 - start]
        )


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("start", [0, 3_000_000])
def test_normal_signal_and_anomalies_are_the_formulas_in_float64(rate: float, start: int) -> None:
    # every kind of anomaly within the range (one every 6 s, 3 s long)
    spec = SignalSpec(
        noise=0.0,
        rate_hz=rate,
        first_anomaly_s=start / rate + 5.0,
        anomaly_every_s=6.0,
        anomaly_duration_s=3.0,
    )
    n = int(30 * rate)
    kinds = {
        a.kind for a in SyntheticSignal(spec).anomalies_between(start / rate, (start + n) / rate)
    }
    assert kinds == {"bearing", "imbalance", "current_surge", "looseness"}
    got = SyntheticSignal(spec).render(start, n)
    ref = _reference(spec, start, n)
    # rounded to float32 once (values up to ~7 A): within a float32 step of the reference
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    # and float32-identical but for the odd sample on a rounding edge
    same = np.mean(got == ref.astype(np.float32))
    assert same >= (0.999 if start == 0 else 0.98), same


@pytest.mark.parametrize("rate", RATES)
def test_noise_is_the_specs_level_fresh_every_sample_and_per_seed(rate: float) -> None:
    n = 200_000
    clean = SyntheticSignal(SignalSpec(noise=0.0, anomalies=False, rate_hz=rate)).render(0, n)
    noises = [
        (
            SyntheticSignal(SignalSpec(seed=s, anomalies=False, rate_hz=rate)).render(0, n) - clean
        ).astype(np.float64)
        for s in (0, 1)
    ]
    for r in noises:
        np.testing.assert_allclose(r.std(axis=0), [0.05, 0.05, 0.05, 0.1], rtol=0.01)
        assert np.all(np.abs(r.mean(axis=0)) < 4 * r.std(axis=0) / np.sqrt(n))
        z = r / r.std(axis=0)
        kurt = np.mean(z**4, axis=0)
        assert np.all(np.abs(kurt - 3.0) < 0.1), kurt  # normal, not uniform (1.8)
        assert np.mean(np.abs(z) > 3) == pytest.approx(0.0027, rel=0.15)
        c = np.corrcoef(np.concatenate([z[1:], z[:-1]], axis=1).T)
        off = c - np.eye(8)
        assert np.abs(off).max() < 0.015, off  # channels and neighbours uncorrelated
    across = np.corrcoef(noises[0][:, 0], noises[1][:, 0])[0, 1]
    assert abs(across) < 0.015, across


@pytest.mark.parametrize("k", [0, 300_000, 2_000_000])  # 2_000_000: ~3.8 years of signal
def test_an_anomaly_starting_on_a_blocks_last_sample_is_in_that_block(k: int) -> None:
    # far out, the last sample's time plus a nanosecond is the same float: the block's
    # search for anomalies must reach to the next sample's time instead
    sig = SyntheticSignal(SignalSpec())
    first = round(sig.anomaly_at_index(k).start_s * sig.spec.rate_hz)
    alone, within = sig.render(first - 7, 8), sig.render(first - 7, 16)[:8]
    assert np.array_equal(alone, within)
    labels = sig.labels(first - 7, 8)
    assert labels[-1]
    assert not labels[-2]


def test_a_negative_seed_is_refused_as_config() -> None:
    from edge_agent.config import parse_config
    from edge_agent.errors import ConfigError

    data = {
        "device_id": "seed-check",
        "streams": [{"name": "a", "source": {"kind": "synthetic", "seed": -1}}],
    }
    with pytest.raises(ConfigError, match="seed"):
        parse_config(data, source="agent.toml")
