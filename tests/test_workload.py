"""Properties of the synthetic trace generator (pure: no processes, no clock)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from fleetpilot.core.model import ServiceClass
from fleetpilot.core.workload import (
    STRESS_FAMILIES,
    Bursts,
    Event,
    LengthDist,
    StressSpec,
    TraceRequest,
    stress_trace,
    synthetic_trace,
)


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


# -- stress families ---------------------------------------------------------------------------


def _cv(trace: tuple[TraceRequest, ...]) -> float:
    gaps = [b.arrival - a.arrival for a, b in itertools.pairwise(trace)]
    mean = sum(gaps) / len(gaps)
    return math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean


def test_stress_families_are_seeded_and_keep_their_mean() -> None:
    for name, spec in STRESS_FAMILIES.items():
        a = stress_trace(spec, 3600.0, 2.0, seed=3)
        assert a == stress_trace(spec, 3600.0, 2.0, seed=3), name
        assert a != stress_trace(spec, 3600.0, 2.0, seed=4), name
        assert all(x.arrival <= y.arrival for x, y in itertools.pairwise(a))
        assert a[0].arrival >= 0 and a[-1].arrival < 3600.0
        if not spec.events:  # events add or remove their share on purpose
            assert len(a) == pytest.approx(7200, rel=0.15), name


def test_bursts_and_clumps_raise_the_inter_arrival_cv() -> None:
    plain = stress_trace(StressSpec(), 7200.0, 3.0, seed=1)
    bursty = stress_trace(STRESS_FAMILIES["bursty-cv3"], 7200.0, 3.0, seed=1)
    clumped = stress_trace(STRESS_FAMILIES["bursty-cv10"], 7200.0, 3.0, seed=1)
    assert _cv(plain) < 1.3 < _cv(bursty) < 3.0 < 8.0 < _cv(clumped)
    assert sum(r.prompt_tokens for r in clumped) / len(clumped) > 1500  # on long prompts


def test_an_outage_has_no_arrivals_and_a_flash_crowd_multiplies_the_rate() -> None:
    spec = StressSpec(events=(Event(1000.0, 600.0, 0.0, 10.0), Event(2500.0, 300.0, 4.0, 10.0)))
    trace = stress_trace(spec, 3600.0, 3.0, seed=2)
    assert not [r for r in trace if 1000.0 <= r.arrival < 1600.0]
    assert len([r for r in trace if 1620.0 <= r.arrival < 1680.0]) > 60  # back within a minute
    crowd = len([r for r in trace if 2510.0 <= r.arrival < 2790.0]) / 280.0
    before = len([r for r in trace if 2100.0 <= r.arrival < 2400.0]) / 300.0
    assert crowd > 3.0 * before
    with pytest.raises(ValueError):
        Bursts(multiplier=0.5, length_s=1.0, share=0.5)
