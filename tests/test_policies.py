"""Baseline capacity policies: sizing at the SLO, bounds, spend cap, delays, SpotHedge, replay."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import replace

import numpy as np
import pytest

from fleetpilot.catalogue import Catalogue, load_catalogue
from fleetpilot.core.capacity import (
    Plan,
    PlanParams,
    plan_cost,
    replica_capacity,
    slo_capacity,
    slo_table,
)
from fleetpilot.core.model import (
    CapacityClass,
    Demand,
    Pool,
    Profile,
    Replica,
    ServiceClass,
    Snapshot,
)
from fleetpilot.core.perf import step_time
from fleetpilot.core.policies import (
    CAPACITY_POLICIES,
    cheapest_fill,
    reactive,
    replicas_needed,
    schedule,
    spot_hedge,
    static_mean,
    static_peak,
)
from fleetpilot.core.shaping import Hold, apply_spend_cap, delayed

MODEL = "llama-3.1-8b"
SHAPE = Demand(rps=10.0, mean_prompt_tokens=512, mean_output_tokens=128)


@functools.cache
def catalogue() -> Catalogue:
    return load_catalogue()


def pools_of(
    *accelerators: str,
    classes: tuple[CapacityClass, ...] = (CapacityClass.ON_DEMAND, CapacityClass.SPOT),
    quota: int = 64,
) -> tuple[Pool, ...]:
    pools = catalogue().pools(MODEL, list(accelerators) or None, classes)
    return tuple(replace(p, offering=replace(p.offering, quota=quota)) for p in pools)


def snap(
    pools: tuple[Pool, ...],
    demand: Demand = SHAPE,
    now: float = 0.0,
    replicas: tuple[Replica, ...] = (),
) -> Snapshot:
    return Snapshot(now, replicas, pools=pools, demand={MODEL: demand})


def replicas_for(
    pools: tuple[Pool, ...], targets: dict[str, int], prefix: str = ""
) -> list[Replica]:
    out = []
    by_name = {p.name: p for p in pools}
    for name, n in sorted(targets.items()):
        pool = by_name[name]
        assert pool.profile is not None
        for i in range(n):
            rid = f"{prefix}{name}/{i}"
            out.append(Replica(rid, name, MODEL, f"x://{rid}", pool.offering, pool.profile))
    return out


def capacity(
    pools: tuple[Pool, ...], targets: dict[str, int], d: Demand, params: PlanParams
) -> float:
    return sum(replica_capacity(p, d, params) * targets.get(p.name, 0) for p in pools)


# -- capacity at the SLO ----------------------------------------------------------------------


def reference_point(
    profile: Profile, ttft: float, itl: float, p: float, o: float
) -> tuple[int, float]:
    """The operating point by its definition, one batch at a time: the largest batch whose
    every smaller batch too keeps a step within ``itl`` and 1.5 steps plus the prefill within
    ``ttft`` (a batch of one when even that misses)."""
    out, prefill = max(o, 1.0), p / profile.prefill_rate
    best = (1, (1 / out) / (step_time(profile, 1) + prefill / out))
    for b in range(2, profile.max_batch + 1):
        d = step_time(profile, b) + (b / out) * prefill
        if d > itl or 1.5 * d + prefill > ttft:
            break
        best = (b, (b / out) / d)
    return best


def test_slo_capacity_and_replica_capacity_follow_the_definition() -> None:
    prompts = [1.0, 37.5, 256.0, 1024.0, 4000.0]
    outputs = [0.5, 16.0, 128.0, 700.0]
    grid = [(p, o) for p in prompts for o in outputs]
    for model in catalogue().models:
        for acc in catalogue().accelerators_for(model):
            profile = catalogue().profile(model, acc)
            pool = Pool("p", model, catalogue().offering(model, acc, "on_demand"), 0, profile)
            for ttft, itl in [(2.0, 0.2), (0.3, 0.03), (20.0, 2.0)]:
                params = PlanParams(ttft_slo_s=ttft, itl_slo_s=itl, utilisation=1.0,
                                    calibration={})  # analytic  # fmt: skip
                table = slo_table(
                    profile,
                    ttft_slo_s=ttft,
                    itl_slo_s=itl,
                    mean_prompt_tokens=[p for p, _ in grid],
                    mean_output_tokens=[o for _, o in grid],
                )
                for i, (p, o) in enumerate(grid):
                    batch, rps = reference_point(profile, ttft, itl, p, o)
                    one = slo_capacity(profile, ttft_slo_s=ttft, itl_slo_s=itl,
                                       mean_prompt_tokens=p, mean_output_tokens=o)  # fmt: skip
                    assert table.batch[i] == one.batch == batch
                    assert table.requests_per_s[i] == pytest.approx(rps, rel=1e-12)
                    assert one.requests_per_s == table.requests_per_s[i]
                    # planned capacity: the same rule at lengths rounded up ≤ 2.2%
                    gp, go = (
                        2 ** (math.ceil(32 * math.log2(max(x, 1.0)) - 1e-12) / 32) for x in (p, o)
                    )
                    d = Demand(mean_prompt_tokens=p, mean_output_tokens=o)
                    assert gp >= p and gp <= max(p, 1.0) * 2 ** (1 / 32) + 1e-9
                    _, at_grid = reference_point(profile, ttft, itl, gp, go)
                    assert replica_capacity(pool, d, params) == pytest.approx(at_grid, rel=1e-12)


def test_replicas_needed_grows_with_demand_and_shrinks_with_utilisation() -> None:
    pool = pools_of("A10G", classes=(CapacityClass.ON_DEMAND,))[0]
    counts = [replicas_needed(replace(SHAPE, rps=r), pool, PlanParams()) for r in range(0, 60)]
    assert counts[0] == 0
    assert counts == sorted(counts) and counts[-1] > counts[1] >= 1
    cap = replica_capacity(pool, SHAPE, PlanParams())
    assert replicas_needed(replace(SHAPE, rps=3 * cap), pool, PlanParams()) == 3  # no float creep
    busy = PlanParams(utilisation=1.0)
    assert replicas_needed(replace(SHAPE, rps=50), pool, busy) <= counts[50]


# -- static policies --------------------------------------------------------------------------


def test_static_peak_is_on_demand_sized_for_the_peak_and_at_least_static_mean() -> None:
    pools = pools_of()
    params = PlanParams().with_knobs({"peak_rps": 40.0, "mean_rps": 15.0})
    peak, state = static_peak(snap(pools), None, params)
    mean, _ = static_mean(snap(pools), None, params)
    assert set(peak.targets) == {p.name for p in pools}  # every pool named
    for plan in (peak, mean):
        assert all(
            n == 0 for name, n in plan.targets.items() if name.endswith(CapacityClass.SPOT.value)
        )
    assert capacity(pools, peak.targets, SHAPE, params) >= 40.0
    assert capacity(pools, mean.targets, SHAPE, params) >= 15.0
    assert peak.cost_per_hour >= mean.cost_per_hour
    assert peak.cost_per_hour == pytest.approx(plan_cost(peak.targets, pools))
    # Sized once: later demand does not move it.
    again, _ = static_peak(snap(pools, replace(SHAPE, rps=500.0), now=3600.0), state, params)
    assert again == peak


def test_more_peak_means_more_replicas_and_the_cheapest_offering_wins() -> None:
    od = pools_of(classes=(CapacityClass.ON_DEMAND,))
    params = PlanParams(min_replicas=0)
    last_cost = 0.0
    for rps in [0.5, 1, 2, 5, 8, 13, 21, 34, 55]:
        plan, _ = static_peak(snap(od), None, params.with_knobs({"peak_rps": float(rps)}))
        assert capacity(od, plan.targets, SHAPE, params) >= rps
        assert plan.cost_per_hour >= last_cost
        last_cost = plan.cost_per_hour
        # Brute force over single pools (one pool always fits here): none is cheaper.
        best = min(
            replicas_needed(replace(SHAPE, rps=rps), p, params) * p.offering.price_per_hour
            for p in od
        )
        assert plan.cost_per_hour == pytest.approx(best)


def test_cheapest_fill_spills_over_quotas() -> None:
    od = pools_of("A100-80G", "L40S", classes=(CapacityClass.ON_DEMAND,), quota=2)
    params = PlanParams()
    targets = cheapest_fill(30.0, od, SHAPE, params)
    assert all(n <= 2 for n in targets.values())
    assert capacity(od, targets, SHAPE, params) >= min(
        30.0, capacity(od, {p.name: 2 for p in od}, SHAPE, params)
    )


# -- spend cap --------------------------------------------------------------------------------


def test_spend_cap_is_never_exceeded_and_batch_is_shed_first() -> None:
    rng = random.Random(7)
    pools = pools_of()
    for _ in range(200):
        d = replace(SHAPE, rps=rng.uniform(0, 120), batch_share=rng.choice([0.0, 0.3, 0.6]))
        cap = rng.choice([0.0, 0.5, 3.0, 10.0, 40.0, 200.0])
        params = PlanParams(spend_cap_per_hour=cap, min_replicas=rng.randint(0, 3)).with_knobs(
            {"peak_rps": d.rps, "mean_rps": d.rps / 2}
        )
        for name, policy in CAPACITY_POLICIES.items():
            plan, _ = policy(snap(pools, d), None, params)
            assert plan.cost_per_hour <= cap + 1e-9, name
            assert plan.cost_per_hour == pytest.approx(plan_cost(plan.targets, pools))
            if plan.shed:
                assert plan.shed[0] is ServiceClass.BATCH


def test_spend_cap_sheds_batch_only_when_interactive_still_fits() -> None:
    od = pools_of("A10G", classes=(CapacityClass.ON_DEMAND,))
    d = replace(SHAPE, rps=10.0, batch_share=0.5)
    params = PlanParams().with_knobs({"peak_rps": 10.0})
    full, _ = static_peak(snap(od, d), None, params)
    half = replicas_needed(replace(d, rps=5.0), od[0], params) * od[0].offering.price_per_hour
    assert half < full.cost_per_hour
    capped, _ = static_peak(snap(od, d), None, replace(params, spend_cap_per_hour=half + 0.01))
    assert capped.shed == (ServiceClass.BATCH,)
    assert capacity(od, capped.targets, d, params) >= 5.0
    starved, _ = static_peak(snap(od, d), None, replace(params, spend_cap_per_hour=half / 2))
    assert starved.shed == (ServiceClass.BATCH, ServiceClass.INTERACTIVE)
    assert starved.cost_per_hour <= half / 2


def test_apply_spend_cap_drops_the_worst_value_first() -> None:
    od = pools_of("L4", "L40S", classes=(CapacityClass.ON_DEMAND,))
    l4, l40s = (p.name for p in sorted(od, key=lambda p: p.offering.accelerator))
    targets = {l4: 3, l40s: 3}  # L4 costs more per unit of capacity
    cost = plan_cost(targets, od)
    plan = apply_spend_cap(targets, od, SHAPE, PlanParams(spend_cap_per_hour=cost - 1.0))
    assert plan.targets[l40s] == 3 and plan.targets[l4] < 3
    assert plan.cost_per_hour <= cost - 1.0


# -- hysteresis and reactive ------------------------------------------------------------------


def test_delayed_waits_out_each_direction() -> None:
    n, hold = delayed(2, 5, None, 0.0, up_delay_s=30, down_delay_s=600)
    assert (n, hold) == (2, Hold(1, 0.0))
    assert delayed(2, 5, hold, 30.0, up_delay_s=30, down_delay_s=600)[0] == 2
    assert delayed(2, 5, hold, 31.0, up_delay_s=30, down_delay_s=600) == (5, None)
    # A change of direction restarts the clock.
    n, hold2 = delayed(2, 1, hold, 20.0, up_delay_s=30, down_delay_s=600)
    assert n == 2 and hold2 == Hold(-1, 20.0)
    assert delayed(2, 1, None, 0.0, up_delay_s=0, down_delay_s=0) == (1, None)


def _run_reactive(in_flight: list[int], dt: float, params: PlanParams) -> list[int]:
    pools = pools_of("A10G", classes=(CapacityClass.ON_DEMAND,))
    state = None
    sizes = []
    for i, load in enumerate(in_flight):
        plan, state = reactive(
            snap(pools, replace(SHAPE, in_flight=load), now=i * dt), state, params
        )
        sizes.append(sum(plan.targets.values()))
    return sizes


def test_reactive_scales_up_after_the_upscale_delay_and_down_after_the_downscale_delay() -> None:
    params = PlanParams().with_knobs({"target_ongoing_requests": 10})
    # Calls every 10 s; in-flight steps from 20 to 80 (observed at t=100), back to 20 at t=400.
    loads = [20] * 10 + [80] * 30 + [20] * 100
    sizes = _run_reactive(loads, 10.0, params)
    assert sizes[0] == 2  # sized at once on the first call
    up = sizes.index(8)
    # Seen at t=100 over (90, 100]; a rise is applied once it held more than 30 s.
    assert up * 10.0 == 130.0
    assert all(s == 2 for s in sizes[:up])
    down = next(i for i in range(40, len(sizes)) if sizes[i] == 2)
    assert down * 10.0 == 1000.0  # seen at 400 over (390, 400]: more than 600 s later
    assert all(s == 8 for s in sizes[up:down])
    # A blip shorter than the delay changes nothing.
    assert max(_run_reactive([20] * 5 + [80] * 3 + [20] * 5, 10.0, params)) == 2


def test_reactive_default_target_is_the_slo_batch_times_utilisation() -> None:
    pools = pools_of("A10G", classes=(CapacityClass.ON_DEMAND,))
    profile = pools[0].profile
    assert profile is not None
    batch = slo_capacity(
        profile, ttft_slo_s=2.0, itl_slo_s=0.2, mean_prompt_tokens=512, mean_output_tokens=128
    ).batch
    params = PlanParams()
    in_flight = 10 * batch
    plan, _ = reactive(snap(pools, replace(SHAPE, in_flight=in_flight)), None, params)
    assert sum(plan.targets.values()) == math.ceil(in_flight / (batch * params.utilisation))


# -- SpotHedge --------------------------------------------------------------------------------


def test_spot_hedge_falls_back_to_on_demand_when_spot_is_lost_and_returns() -> None:
    pools = pools_of("A10G", "L4", "L40S")
    params = PlanParams().with_knobs(
        {"spot_cooldown_s": 1800.0, "fallback_downscale_delay_s": 300.0}
    )
    d = replace(SHAPE, rps=8.0)
    od_names = {p.name for p in pools if p.offering.capacity_class is CapacityClass.ON_DEMAND}
    spot_names = {p.name for p in pools if p.offering.capacity_class is CapacityClass.SPOT}

    def od(plan: Plan) -> int:
        return sum(plan.targets[n] for n in od_names)

    plan, state = spot_hedge(snap(pools, d), None, params)
    assert od(plan) == 0
    used = [n for n in spot_names if plan.targets[n] > 0]
    assert len(used) == 2  # spread over two spot pools
    assert capacity(pools, plan.targets, d, params) >= d.rps * params.safety
    # Spares: capacity is left after losing any one replica.
    for name in used:
        fewer = dict(plan.targets, **{name: plan.targets[name] - 1})
        assert capacity(pools, fewer, d, params) >= d.rps * params.safety
    reps = replicas_for(pools, {n: plan.targets[n] for n in spot_names})
    plan, state = spot_hedge(snap(pools, d, 60.0, tuple(reps)), state, params)
    assert od(plan) == 0  # all as planned: no fallback

    # The whole of one spot pool is pre-empted.
    by_name = {p.name: p for p in pools}

    def carried_by(name: str) -> float:
        return plan.targets[name] * replica_capacity(by_name[name], d, params)

    victim = max(used, key=carried_by)
    assert capacity(pools, plan.targets, d, params) - carried_by(victim) < d.rps * params.safety
    left = tuple(r for r in reps if r.pool != victim)
    plan, state = spot_hedge(snap(pools, d, 120.0, left), state, params)
    assert state.preemptions == sum(r.pool == victim for r in reps)
    assert od(plan) > 0
    assert plan.targets[victim] == 0  # no new replicas on a pool that was just pre-empted
    assert capacity(pools, plan.targets, d, params) >= d.rps * params.safety

    # Spot elsewhere comes up: the on-demand fallback goes once the delay has passed.
    fallback = od(plan)
    spot_targets = {n: plan.targets[n] for n in spot_names}
    reps2 = tuple(replicas_for(pools, spot_targets, prefix="b-"))
    reps2 += tuple(replicas_for(pools, {n: plan.targets[n] for n in od_names}, prefix="b-"))
    plan, state = spot_hedge(snap(pools, d, 180.0, reps2), state, params)
    assert od(plan) == fallback  # spot is back, but the fallback waits (300 s)
    plan, state = spot_hedge(snap(pools, d, 500.0, reps2), state, params)
    assert od(plan) == 0
    assert plan.targets[victim] == 0
    # After the cooldown the pre-empted pool is eligible again.
    plan, state = spot_hedge(snap(pools, d, 120.0 + 1800.0 + 1.0, reps2), state, params)
    assert od(plan) == 0
    assert spot_hedge(snap(pools, d, 120.0 + 1800.0 + 1.0), None, params)[0].targets[victim] > 0


def test_spot_hedge_treats_a_launch_that_does_not_come_up_as_lost_capacity() -> None:
    pools = pools_of("A10G", "L40S")
    params = PlanParams()
    d = replace(SHAPE, rps=4.0)
    plan, state = spot_hedge(snap(pools, d), None, params)
    # The market gives nothing: no spot replica exists at the next call.
    plan, state = spot_hedge(snap(pools, d, 60.0), state, params)
    od = sum(n for name, n in plan.targets.items() if name.endswith("on_demand"))
    assert od > 0
    assert (
        capacity(
            pools, {k: v for k, v in plan.targets.items() if k.endswith("on_demand")}, d, params
        )
        >= d.rps * params.safety
    )


# -- schedule ---------------------------------------------------------------------------------


def test_schedule_replays_exactly() -> None:
    pools = pools_of("A10G", "L4")
    rng = random.Random(3)
    plans = [{p.name: rng.randint(0, 5) for p in pools[:3]} for _ in range(12)]
    policy = schedule(plans, 600.0)
    for w, expected in enumerate(plans):
        for offset in (0.0, 1.0, 599.0):
            plan, state = policy(snap(pools, now=w * 600.0 + offset), None, PlanParams())
            assert state is None
            assert plan.targets == {p.name: expected.get(p.name, 0) for p in pools}
            assert plan.cost_per_hour == pytest.approx(plan_cost(expected, pools))
    assert (
        policy(snap(pools, now=1e9), None, PlanParams())[0].targets[pools[0].name]
        == plans[-1][pools[0].name]
    )
    ahead = schedule(plans, 600.0, lead_s=600.0)
    plan, _ = ahead(snap(pools, now=0.0), None, PlanParams())
    assert plan.targets[pools[0].name] == max(plans[0][pools[0].name], plans[1][pools[0].name])
    assert (
        policy(snap(pools, now=0.0), None, PlanParams())[0]
        == schedule([Plan(plans[0])], 600.0)(snap(pools, now=0.0), None, PlanParams())[0]
    )


def test_policies_are_pure_same_inputs_same_plans() -> None:
    pools = pools_of()
    params = PlanParams().with_knobs({"peak_rps": 30.0, "mean_rps": 12.0})
    loads = [float(x) for x in np.random.default_rng(5).uniform(1, 40, 20)]

    def run(policy: object) -> list[Plan]:
        assert callable(policy)
        state = None
        plans = []
        for i, r in enumerate(loads):
            d = replace(SHAPE, rps=r, in_flight=int(3 * r))
            plan, state = policy(snap(pools, d, i * 60.0), state, params)
            plans.append(plan)
        return plans

    for name, policy in CAPACITY_POLICIES.items():
        assert run(policy) == run(policy), name


def test_static_policies_wait_for_traffic_before_sizing() -> None:
    # An engine's first call may come before any request was counted: Demand() then carries
    # made-up lengths (256/128), and a fleet sized at them is too small for long prompts.
    pools = tuple(replace(p, target=2 if i == 0 else 0) for i, p in enumerate(pools_of()))
    params = PlanParams().with_knobs({"peak_rps": 40.0})
    empty = Demand(in_flight=3)
    kept, state = static_peak(snap(pools, empty), None, params)
    assert state is None
    assert kept.targets == {p.name: p.target for p in pools}
    long = Demand(rps=5.0, mean_prompt_tokens=2000, mean_output_tokens=300)
    sized, state = static_peak(snap(pools, long, now=60.0), state, params)
    assert state is not None
    assert capacity(pools, sized.targets, long, params) >= 40.0
    short, _ = static_peak(snap(pools, SHAPE), None, params)
    assert sized.cost_per_hour > short.cost_per_hour  # long prompts need more replicas
