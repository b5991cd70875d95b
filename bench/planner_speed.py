"""How long one control step of the adaptive planner takes on a 50-offering fleet.

The fleet: llama-3.1-8b on the catalogue's 5 accelerators × 2 capacity classes (on-demand,
spot), replicated across 5 regions whose prices differ (a region factor, and spot prices
jittered per region): 50 pools, ``--quota`` replicas each (256: the quotas rarely bind, so
the MILP has real choices; 32: they bind at the peak and force the mix to spread).  Demand
follows a diurnal cycle with bursts (300–2,700 req/s), one observation per 30 s control step
from 04:00 through the morning ramp, and the policy's targets are fed back as the fleet's
current targets, as the controller would.

A step of ``adaptive`` is: forecast update, MILP, shaping, spend cap.  The baseline, timed in
the same run over the same demand, is a greedy heuristic: the same forecast update, then fill
the cheapest offering per unit of SLO capacity up to its quota, then the next (no hedging, no
spread).  Both are pure functions; the table gives the median and p99 of the wall time of a
step, the ratio to the baseline, the mean $/hour each planned, and the smallest share of the
observed demand its planned capacity still held after losing its largest spot zone (what the
MILP's hedge buys: the greedy plan piles onto the cheapest spot pools).  The adaptive plan
also costs more because it holds capacity for ``hold_s`` after demand falls; what that buys
in SLO attainment is the simulator's to measure, not this benchmark's.

    .venv/bin/python bench/planner_speed.py [--steps 960] [--quota 256] [--split]

``--split`` reports demand in two size classes (the MILP then has twice the allocation
columns).  Target: < 100 ms per step.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.adaptive import PlannerState, adaptive
from fleetpilot.core.capacity import Plan, PlanParams, replica_capacity
from fleetpilot.core.forecast import ForecastState, forecast, new_state, observe
from fleetpilot.core.mix import size_key
from fleetpilot.core.model import CapacityClass, Demand, Pool, Snapshot

MODEL = "llama-3.1-8b"
REGIONS = {
    "us-east-1": 1.0,
    "us-east-2": 1.02,
    "us-west-2": 1.06,
    "eu-west-1": 1.12,
    "ap-ne-1": 1.2,
}


def fleet(quota: int = 256, seed: int = 7) -> tuple[Pool, ...]:
    cat = load_catalogue()
    rng = random.Random(seed)
    pools: list[Pool] = []
    for region, factor in REGIONS.items():
        for pool in cat.pools(MODEL, classes=(CapacityClass.ON_DEMAND, CapacityClass.SPOT)):
            off = pool.offering
            jitter = rng.uniform(0.85, 1.25) if off.capacity_class is CapacityClass.SPOT else 1.0
            off = replace(
                off,
                name=f"{off.name}-{region}",
                region=region,
                price_per_hour=round(off.price_per_hour * factor * jitter, 4),
                quota=quota,
            )
            pools.append(replace(pool, name=off.name, offering=off))
    assert len(pools) == 50, len(pools)
    return tuple(pools)


def demand_at(t: float, rng: random.Random) -> float:
    day = 300 + 1800 * (0.5 - 0.5 * math.cos(2 * math.pi * t / 86_400))
    burst = 1.3 if (t // 1800) % 7 == 3 else 1.0
    return day * burst * rng.lognormvariate(0, 0.05)


def observed(t: float, rng: random.Random, split: bool) -> dict[str, Demand]:
    rps = demand_at(t, rng)
    if not split:
        return {MODEL: Demand(rps=rps, mean_prompt_tokens=900, mean_output_tokens=180)}
    return {
        size_key(MODEL, "small"): Demand(rps * 0.7, 300, 150, batch_share=0.2),
        size_key(MODEL, "large"): Demand(rps * 0.3, 3000, 250, batch_share=0.2),
    }


def greedy(
    pools: tuple[Pool, ...], state: dict[str, ForecastState], snap: Snapshot, params: PlanParams
) -> Plan:
    """Baseline: forecast, then fill the cheapest $ per unit of capacity first."""
    targets = {p.name: 0 for p in pools}
    for key, d in snap.demand.items():
        fs = observe(state.get(key) or new_state(), snap.now, d.rps, d.mean_prompt_tokens)
        state[key] = fs
        need = forecast(fs, snap.now, 210.0).upper_rps * params.safety
        ranked = sorted(
            pools,
            key=lambda p: p.offering.price_per_hour / max(replica_capacity(p, d, params), 1e-9),
        )
        for p in ranked:
            if need <= 0:
                break
            cap = replica_capacity(p, d, params)
            n = min(p.offering.quota - targets[p.name], math.ceil(need / cap))
            targets[p.name] += n
            need -= n * cap
    cost = sum(p.offering.price_per_hour * targets[p.name] for p in pools)
    return Plan(targets=targets, cost_per_hour=cost)


def after_spot_loss(pools: tuple[Pool, ...], plan: Plan, demand: dict[str, Demand]) -> float:
    """Planned capacity left after losing the largest spot zone (a spot pool's fullest zone,
    ``ceil(x / zones)`` replicas; the whole pool when it has one zone), over the observed
    demand."""
    rps = sum(d.rps for d in demand.values())
    mix = Demand(
        rps=rps,
        mean_prompt_tokens=sum(d.rps * d.mean_prompt_tokens for d in demand.values()) / rps,
        mean_output_tokens=sum(d.rps * d.mean_output_tokens for d in demand.values()) / rps,
    )
    params = PlanParams()
    one = {p.name: replica_capacity(p, mix, params) for p in pools}
    cap = {p.name: one[p.name] * plan.targets.get(p.name, 0) for p in pools}
    spot = [
        one[p.name] * math.ceil(plan.targets.get(p.name, 0) / p.offering.zones)
        for p in pools
        if p.offering.capacity_class is CapacityClass.SPOT
    ]
    return (sum(cap.values()) - max(spot, default=0.0)) / rps


def run(
    step: Callable[[Snapshot], Plan], pools: tuple[Pool, ...], steps: int, split: bool
) -> tuple[list[float], list[float], list[float]]:
    rng = random.Random(1)
    current = dict.fromkeys((p.name for p in pools), 0)
    times: list[float] = []
    costs: list[float] = []
    cover: list[float] = []
    for i in range(steps):
        now = 4 * 3600 + 30.0 * i
        snap = Snapshot(
            now=now,
            replicas=(),
            pools=tuple(replace(p, target=current[p.name]) for p in pools),
            demand=observed(now, rng, split),
        )
        t0 = time.perf_counter()
        plan = step(snap)
        times.append(time.perf_counter() - t0)
        costs.append(plan.cost_per_hour)
        cover.append(after_spot_loss(pools, plan, snap.demand))
        current = dict(plan.targets)
    return times, costs, cover


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=960, help="of 30 s, from 04:00")
    ap.add_argument("--quota", type=int, default=256, help="replicas per offering")
    ap.add_argument("--split", action="store_true", help="two size classes")
    args = ap.parse_args()
    pools = fleet(args.quota)
    params = PlanParams()

    box: list[PlannerState | None] = [None]

    def adaptive_step(snap: Snapshot) -> Plan:
        plan, box[0] = adaptive(snap, box[0], params)
        return plan

    fstate: dict[str, ForecastState] = {}

    def greedy_step(snap: Snapshot) -> Plan:
        return greedy(pools, fstate, snap, params)

    rows = []
    base_med = 0.0
    for name, fn in (("greedy (baseline)", greedy_step), ("adaptive (MILP)", adaptive_step)):
        times, costs, cover = run(fn, pools, args.steps, args.split)
        ms = sorted(1e3 * t for t in times)
        med, p99 = statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        base_med = base_med or med
        rows.append((name, med, p99, med / base_med, statistics.fmean(costs), min(cover)))

    mode = "2 size classes" if args.split else "1 demand class"
    print(f"50 pools (quota {args.quota}), {args.steps} steps of 30 s, {mode}; target < 100 ms")
    head = f"{'policy':<20}{'median ms':>11}{'p99 ms':>9}{'× baseline':>12}{'mean $/h':>10}"
    print(head + f"{'min cover after spot loss':>27}")
    for name, med, p99, ratio, cost, cover in rows:
        print(f"{name:<20}{med:>11.2f}{p99:>9.2f}{ratio:>12.1f}{cost:>10.1f}{cover:>27.2f}")


if __name__ == "__main__":
    main()
