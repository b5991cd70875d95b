"""Burstiness: measured per 2-s bucket where requests arrive, learnt where capacity is planned."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from fleetpilot.catalogue import load_catalogue
from fleetpilot.clock import ManualClock
from fleetpilot.controller.observe import DemandEstimator, parse_counters
from fleetpilot.core.adaptive import PlannerState, adaptive
from fleetpilot.core.burstiness import (
    BUCKET_S,
    EDGES,
    BurstMeter,
    BurstState,
    burst_rps,
    excess,
    learn,
    learnt_excess,
    poisson_burst,
)
from fleetpilot.core.capacity import PlanParams
from fleetpilot.core.model import CapacityClass, Demand, Snapshot
from fleetpilot.gateway.metrics import GatewayMetrics

MODEL = "llama-3.1-8b"


def poisson(rps: float, seconds: float, seed: int) -> list[float]:
    rng, t, out = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rps)
        if t >= seconds:
            return out
        out.append(t)


def clumped(rps: float, seconds: float, size: int, seed: int) -> list[float]:
    """The same mean rate in clumps of ``size`` requests within a second."""
    rng = random.Random(seed)
    starts = poisson(rps / size, seconds, seed)
    return sorted(s + rng.random() for s in starts for _ in range(size) if s + 1 < seconds)


def measured(times: list[float]) -> list[int]:
    meter = BurstMeter()
    for t in times:
        meter.add(t)
    meter.flush(times[-1] + BUCKET_S)
    return meter.counts


@pytest.mark.parametrize("rps", [0.5, 3.0, 40.0, 400.0])
def test_poisson_arrivals_count_as_no_excess(rps: float) -> None:
    counts = measured(poisson(rps, 3600.0, seed=1))
    assert sum(counts) == pytest.approx(rps * 3600, rel=0.05)  # every request filed once
    got = excess(counts, rps)
    assert got is not None and 1.0 <= got <= 1.3
    assert burst_rps(counts) == pytest.approx(poisson_burst(rps), rel=0.3)


def test_clumps_at_the_same_mean_are_an_excess() -> None:
    counts = measured(clumped(3.0, 3600.0, size=30, seed=2))
    got = excess(counts, 3.0)
    assert got is not None and got >= 3.0
    assert excess([0] * len(EDGES), 3.0) is None and excess(counts, 0.0) is None


def test_the_meter_weighs_by_request_and_files_a_bucket_once_closed() -> None:
    meter = BurstMeter()
    for t in [0.1, 0.2, 0.3, 0.4, 5.0]:  # four in one bucket (2 req/s), one in another
        meter.add(t)
    assert sum(meter.counts) == 4  # the second bucket is still open
    meter.flush(5.5)
    assert sum(meter.counts) == 4
    meter.flush(6.0)
    assert sum(meter.counts) == 5
    assert (
        meter.counts[EDGES.index(2.0 if 2.0 in EDGES else min(e for e in EDGES if e >= 2.0))] == 4
    )
    assert burst_rps(meter.counts, 0.5) >= 2.0 > burst_rps(meter.counts, 0.1)


def test_learnt_excess_is_a_decayed_request_weighted_quantile() -> None:
    state = BurstState()
    assert learnt_excess(state, 0.9) == 1.0
    for i in range(20):
        state = learn(state, i * 60.0, 1.0, 100.0, half_life_s=3600.0)
    state = learn(state, 1200.0, 4.0, 100.0, half_life_s=3600.0)
    assert learnt_excess(state, 0.5) == 1.0
    assert 3.9 <= learnt_excess(state, 0.99) <= 4.5
    later = learn(state, 1200.0 + 20 * 3600.0, 1.0, 1.0, half_life_s=3600.0)
    assert learnt_excess(later, 0.99) == 1.0  # the burst is forgotten, the memory bounded
    assert len(later.weights) == len(state.weights)


def test_the_planner_provisions_for_learnt_burstiness_and_not_without_it() -> None:
    pools = load_catalogue().pools(MODEL, ["L4"], (CapacityClass.ON_DEMAND,))

    def size(burst: float | None, params: PlanParams) -> int:
        state: PlannerState | None = None
        plan = None
        for i in range(10):
            d = Demand(rps=5.0, mean_prompt_tokens=512, mean_output_tokens=128, burst_excess=burst)
            fleet = tuple(
                replace(p, target=0 if plan is None else plan.targets[p.name]) for p in pools
            )
            plan, state = adaptive(Snapshot(60.0 * i, (), 0, fleet, {MODEL: d}), state, params)
        assert plan is not None
        return sum(plan.targets.values())

    params = PlanParams()
    plain, poissonish, bursty = size(None, params), size(1.0, params), size(3.0, params)
    assert plain == poissonish < bursty
    assert size(3.0, params.with_knobs({"burst_quantile": 0.0})) == plain


async def test_the_gateway_exports_arrivals_by_burst_and_the_controller_reads_the_excess() -> None:
    """The gateway's meter (fed by every admitted request), rendered as a Prometheus
    histogram and read back by the controller's parser into the demand's excess."""
    from fleetpilot.gateway.fleet import LiveFleet

    clock = ManualClock(0.0)
    live = LiveFleet(clock, [], [])
    metrics = GatewayMetrics(live.idle_costs, live.corrections, live.bursts)
    est = DemandEstimator(clock, [MODEL])

    def scrape() -> Demand:
        return est.update(parse_counters(metrics.render().decode(), {}))[MODEL]

    scrape()
    times = clumped(3.0, 600.0, size=30, seed=4)
    for t in times:
        clock.advance(t - clock.now())
        live.arrived(MODEL)
    clock.advance(600.0 - clock.now())
    text = metrics.render().decode()
    assert 'fleetpilot_arrival_bursts_bucket{le="+Inf",model="llama-3.1-8b"}' in text
    counters = parse_counters(text, {})
    assert sum(counters.bursts[MODEL]) == len(times)
    d = est.update(counters)
    assert d[MODEL].burst_excess is not None and d[MODEL].burst_excess >= 3.0
