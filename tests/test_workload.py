"""Properties of the synthetic trace generator (pure: no processes, no clock)."""

from __future__ import annotations

import math
import random

import pytest

from fleetpilot.core.model import ServiceClass
from fleetpilot.core.workload import LengthDist, TraceRequest, synthetic_trace


def _quantile(values: list[int], q: float) -> float:
    v = sorted(values)
    return float(v[round(q * (len(v) - 1))])


def test_same_seed_same_trace() -> None:
    a = synthetic_trace(600, 5.0, seed=11)
    b = synthetic_trace(600, 5.0, seed=11)
    assert a == b
    assert len(a) > 1000


def test_different_seeds_differ() -> None:
    a = synthetic_trace(600, 5.0, seed=1)
    b = synthetic_trace(600, 5.0, seed=2)
    assert a != b
    assert [r.arrival for r in a[:20]] != [r.arrival for r in b[:20]]


def test_length_parameters_do_not_move_arrivals() -> None:
    a = synthetic_trace(300, 5.0, seed=3)
    b = synthetic_trace(300, 5.0, seed=3, prompt=LengthDist(64, 0.5, 16, 512))
    assert [r.arrival for r in a] == [r.arrival for r in b]
    assert [r.prompt_tokens for r in a] != [r.prompt_tokens for r in b]


def test_sorted_within_duration() -> None:
    trace = synthetic_trace(120, 20.0, seed=4)
    arrivals = [r.arrival for r in trace]
    assert arrivals == sorted(arrivals)
    assert all(0 <= t < 120 for t in arrivals)


def test_mean_rate_without_bursts() -> None:
    duration, rps = 2000.0, 10.0
    counts = [
        len(synthetic_trace(duration, rps, seed=s, burst_rate_per_period=0)) for s in range(5)
    ]
    mean = sum(counts) / len(counts)
    # Poisson: sd of one count ~ sqrt(20,000) ~ 141; five of them averaged is well within 2%.
    assert abs(mean - duration * rps) < 0.02 * duration * rps


def test_rate_follows_the_diurnal_cycle() -> None:
    duration = 3600.0
    trace = synthetic_trace(duration, 10.0, seed=5, burst_rate_per_period=0)
    busy = sum(duration / 4 <= r.arrival < 3 * duration / 4 for r in trace)
    quiet = len(trace) - busy
    # amplitude 0.6: the busy half carries (1 + 0.6 * 2/pi) / (1 - 0.6 * 2/pi) ~ 2.2x the quiet
    assert busy / quiet > 1.8
    flat = synthetic_trace(duration, 10.0, seed=5, burst_rate_per_period=0, diurnal_amplitude=0)
    busy_flat = sum(duration / 4 <= r.arrival < 3 * duration / 4 for r in flat)
    assert 0.9 < busy_flat / (len(flat) - busy_flat) < 1.1


def test_period_can_be_shorter_than_the_trace() -> None:
    trace = synthetic_trace(2000, 10.0, seed=6, period_s=1000, burst_rate_per_period=0)
    peaks = sum(250 <= r.arrival % 1000 < 750 for r in trace)
    assert peaks / (len(trace) - peaks) > 1.8


def test_bursts_raise_the_local_rate() -> None:
    duration = 1000.0
    calm = synthetic_trace(duration, 10.0, seed=8, diurnal_amplitude=0, burst_rate_per_period=0)
    bursty = synthetic_trace(
        duration,
        10.0,
        seed=8,
        diurnal_amplitude=0,
        burst_rate_per_period=4,
        burst_multiplier=4.0,
        burst_len_s=50,
    )

    def busiest_window(trace: tuple[TraceRequest, ...]) -> int:
        bins = [0] * int(duration // 25)
        for r in trace:
            bins[int(r.arrival // 25)] += 1
        return max(bins)

    assert busiest_window(bursty) > 1.8 * busiest_window(calm)


def test_lengths_are_heavy_tailed() -> None:
    trace = synthetic_trace(2000, 10.0, seed=9)
    # An exponential distribution (the lightest of the usual service-time tails) has
    # p99 / p50 = ln 100 / ln 2 ~ 6.6; lognormal sigma 1 has exp(2.33) ~ 10.2.
    light = math.log(100) / math.log(2)
    for values in ([r.prompt_tokens for r in trace], [r.max_tokens for r in trace]):
        ratio = _quantile(values, 0.99) / _quantile(values, 0.5)
        assert ratio > 1.3 * light, ratio
    # and the same check does tell an exponential apart
    rng = random.Random(0)
    exp = [round(1 + rng.expovariate(1 / 100)) for _ in range(20000)]
    assert _quantile(exp, 0.99) / _quantile(exp, 0.5) < 1.1 * light


def test_bounds_respected() -> None:
    trace = synthetic_trace(2000, 20.0, seed=10)
    prompts = [r.prompt_tokens for r in trace]
    outputs = [r.max_tokens for r in trace]
    assert min(prompts) >= 16 and max(prompts) <= 4096
    assert min(outputs) >= 8 and max(outputs) <= 1024
    narrow = synthetic_trace(200, 20.0, seed=10, output=LengthDist(100, 2.0, 50, 60))
    assert {r.max_tokens for r in narrow} <= set(range(50, 61))


def test_service_classes_and_tenants() -> None:
    trace = synthetic_trace(1000, 10.0, seed=12, batch_fraction=0.25)
    batch = sum(r.service_class is ServiceClass.BATCH for r in trace) / len(trace)
    assert 0.2 < batch < 0.3
    tenants = [r.tenant for r in trace]
    assert tenants.count("acme") > tenants.count("globex") > tenants.count("initech") > 0


def test_empty_and_invalid() -> None:
    assert synthetic_trace(10, 0.0, seed=1) == ()
    with pytest.raises(ValueError):
        synthetic_trace(0, 1.0, seed=1)
    with pytest.raises(ValueError):
        synthetic_trace(10, 1.0, seed=1, diurnal_amplitude=1.5)
    with pytest.raises(ValueError):
        LengthDist(median=10, sigma=1, low=20, high=10)
