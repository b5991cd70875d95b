"""Baseline capacity policies and the small rules they are built from.

Every policy is a pure function ``policy(snapshot, state, params) -> (Plan, state)`` (see
:mod:`fleetpilot.core.capacity`); they are chosen by name from :data:`CAPACITY_POLICIES`:

``static_peak``
    On-demand only, sized once for the peak demand it is told about,
    ``params.static.peak_rps`` (the simulators pass the trace's peak; a live controller has to
    be given it).  Without it, the first observed rate × ``safety``.
    It is sized at the first call that saw traffic (the request lengths size a replica);
    until then the fleet is kept as it is.
``static_mean``
    The same, sized for ``params.static.mean_rps``: deliberate under-provisioning.
``reactive``
    Target tracking on in-flight requests, as Ray Serve and KServe scale by default:
    ``ceil(in_flight / target_ongoing_requests)`` replicas, a rise applied once it has held
    for more than ``upscale_delay_s`` (30 s) and a fall for more than ``downscale_delay_s``
    (600 s), counted from the start of the interval whose observation first showed it
    (:func:`delayed`; as Ray Serve's wait periods: a delay shorter than the control interval
    acts at the next call).  ``in_flight`` is ``demand.in_flight`` (the engines fill it).
    ``target_ongoing_requests`` defaults to the SLO batch of the cheapest on-demand pool ×
    ``utilisation``, so that at the target each replica sits at its SLO operating point.
    On-demand only; the first call sizes at once.
``spot_hedge``
    SkyServe's SpotHedge: spot replicas for the demand (× ``safety``), spread over the
    ``spot_spread`` (2) cheapest spot pools, plus ``spot_extra`` (1) spare spot replicas; spot
    pools that lost a replica (pre-empted, or a launch that did not come up) in the last
    ``spot_cooldown_s`` (1800 s) get no new replicas; on-demand replicas cover whatever the
    *ready* spot replicas do not (as SkyServe's dynamic on-demand fallback: spot replicas
    still starting, for a pre-emption or for growth, are covered too), and go again
    ``fallback_downscale_delay_s`` (300 s) after spot is back.  On the first call spot is
    assumed to come up.

:func:`schedule` makes a policy that replays a precomputed schedule (the offline optimum).

Knobs come from ``params.reactive``, ``params.spot_hedge`` and ``params.static``
(:mod:`fleetpilot.core.knobs`), under the names above.  Sizing everywhere is
:func:`~fleetpilot.core.capacity.replica_capacity`, the rule every policy shares.  The rules
are small functions composed by each policy (:mod:`fleetpilot.core.shaping`, and
:func:`cheapest_fill` here).

A plan names every pool of the snapshot (0 for those not used), because engines leave pools
that a plan does not mention at their old targets.  All pools given to one call must serve one
model.  An offering's ``quota`` is read as a number of replicas; an offering without one
(``None``, the default) has no limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetpilot.core.adaptive import adaptive
from fleetpilot.core.capacity import Plan, PlanParams, plan_cost, replica_capacity, slo_capacity
from fleetpilot.core.model import (
    CapacityClass,
    Demand,
    Pool,
    ReplicaState,
    Snapshot,
)
from fleetpilot.core.shaping import (
    Hold,
    apply_bounds,
    apply_spend_cap,
    by_value,
    ceil_replicas,
    delayed,
)

__all__ = [
    "CAPACITY_POLICIES",
    "CapacityPolicy",
    "ReactiveState",
    "SpotHedgeState",
    "StaticState",
    "cheapest_fill",
    "reactive",
    "replicas_needed",
    "schedule",
    "spot_hedge",
    "static_mean",
    "static_peak",
]

CapacityPolicy = Callable[[Snapshot, Any, PlanParams], tuple[Plan, Any]]

_EPS = 1e-9
_LIVE = (ReplicaState.STARTING, ReplicaState.READY)


# ---------------------------------------------------------------------------------------------
# Sizing


def replicas_needed(demand: Demand, pool: Pool, params: PlanParams) -> int:
    """Replicas of ``pool`` that carry ``demand.rps`` at the planned utilisation."""
    if demand.rps <= 0:
        return 0
    cap = replica_capacity(pool, demand, params)
    if cap <= 0:
        raise ValueError(f"pool {pool.name!r} has no profile: its capacity is unknown")
    return ceil_replicas(demand.rps / cap)


def cheapest_fill(
    rps: float, pools: Sequence[Pool], demand: Demand, params: PlanParams
) -> dict[str, int]:
    """Whole replicas over ``pools`` that carry ``rps`` of ``demand``'s shape, cheaply.

    While no single pool can take the rest within its quota, the pool cheapest per unit of
    capacity is filled to its quota; then the rest goes to whichever pool carries it for the
    fewest dollars in whole replicas (for a small rest, a small cheap replica can beat the
    best-value large one).  If every quota is used up, the rest stays unserved.
    """
    targets = {p.name: 0 for p in pools}
    caps = {p.name: replica_capacity(p, demand, params) for p in pools}
    ranked = by_value(pools, demand, params)
    remaining = rps
    while remaining > _EPS and ranked:
        room = {  # replicas each pool can still take
            p.name: math.inf if p.offering.quota is None else p.offering.quota - targets[p.name]
            for p in ranked
        }
        fits = [p for p in ranked if caps[p.name] * room[p.name] >= remaining - _EPS]
        if fits:
            best = min(
                fits,
                key=lambda p: (
                    ceil_replicas(remaining / caps[p.name]) * p.offering.price_per_hour,
                    ranked.index(p),
                ),
            )
            targets[best.name] += ceil_replicas(remaining / caps[best.name])
            break
        first = ranked.pop(0)  # it does not fit the rest, so it has a quota
        targets[first.name] += int(room[first.name])
        remaining -= room[first.name] * caps[first.name]
    return targets


def _fill_count(n: int, ranked: Sequence[Pool]) -> dict[str, int]:
    """``n`` replicas down ``ranked`` pools, each up to its quota."""
    out: dict[str, int] = {}
    for pool in ranked:
        take = pool.offering.within_quota(n)
        if take > 0:
            out[pool.name] = take
            n -= take
    return out


# ---------------------------------------------------------------------------------------------
# Reading the snapshot


def _model(snapshot: Snapshot) -> str:
    models = {p.model for p in snapshot.pools}
    if len(models) != 1:
        raise ValueError(f"capacity policies plan one model per call, got {sorted(models)}")
    return models.pop()


def _demand(snapshot: Snapshot) -> Demand:
    return snapshot.demand.get(_model(snapshot), Demand())


def _of_class(snapshot: Snapshot, cls: CapacityClass) -> list[Pool]:
    return [p for p in snapshot.pools if p.offering.capacity_class is cls and p.profile is not None]


def _finish(
    targets: Mapping[str, int],
    snapshot: Snapshot,
    candidates: Sequence[Pool],
    demand: Demand,
    params: PlanParams,
    *,
    rps: float | None = None,
    resize: Callable[[float], Mapping[str, int]] | None = None,
    note: str = "",
) -> Plan:
    """Bounds, then the spend cap, over every pool of the snapshot."""
    bounded = apply_bounds(targets, candidates, params)

    def rebound(r: float) -> Mapping[str, int]:
        assert resize is not None
        return apply_bounds(resize(r), candidates, params)

    return apply_spend_cap(
        bounded,
        snapshot.pools,
        demand,
        params,
        rps=rps,
        resize=rebound if resize is not None else None,
        note=note,
    )


# ---------------------------------------------------------------------------------------------
# Static policies


@dataclass(frozen=True, slots=True)
class StaticState:
    plan: Plan
    pools: tuple[str, ...]


def _static(key: str) -> CapacityPolicy:
    def policy(
        snapshot: Snapshot, state: StaticState | None, params: PlanParams
    ) -> tuple[Plan, StaticState | None]:
        names = tuple(p.name for p in snapshot.pools)
        if state is not None and state.pools == names:
            return state.plan, state
        demand = _demand(snapshot)
        if demand.rps <= 0 and state is None:
            # Nothing measured yet, so no request lengths to size with: wait for traffic.
            targets = {p.name: p.target for p in snapshot.pools}
            kept = Plan(targets, (), "nothing observed yet", plan_cost(targets, snapshot.pools))
            return kept, None
        on_demand = _of_class(snapshot, CapacityClass.ON_DEMAND)
        given = getattr(params.static, key)
        if given is not None:
            rps, note = float(given), f"{key}={given:.3g}"
        else:
            rps = demand.rps * params.safety
            note = f"no {key} given: sized for observed rps x safety = {rps:.3g}"

        def size(r: float) -> Mapping[str, int]:
            return cheapest_fill(r, on_demand, demand, params)

        plan = _finish(size(rps), snapshot, on_demand, demand, params, rps=rps, resize=size,
                       note=note)  # fmt: skip
        return plan, StaticState(plan, names)

    policy.__name__ = f"static_{key.removesuffix('_rps')}"
    policy.__doc__ = f"On-demand only, sized once for params.static.{key}."
    return policy


static_peak = _static("peak_rps")
static_mean = _static("mean_rps")


# ---------------------------------------------------------------------------------------------
# Reactive: target tracking on in-flight requests


@dataclass(frozen=True, slots=True)
class ReactiveState:
    replicas: int
    hold: Hold | None
    last_now: float


def reactive(
    snapshot: Snapshot, state: ReactiveState | None, params: PlanParams
) -> tuple[Plan, ReactiveState]:
    """Ray Serve / KServe-style target tracking on ``demand.in_flight`` (see the module)."""
    demand = _demand(snapshot)
    ranked = by_value(_of_class(snapshot, CapacityClass.ON_DEMAND), demand, params)
    if not ranked:
        empty = Plan({p.name: 0 for p in snapshot.pools}, note="no on-demand pool")
        return empty, ReactiveState(0, None, snapshot.now)
    best = ranked[0]
    assert best.profile is not None
    knobs = params.reactive
    if knobs.target_ongoing_requests is not None:
        per_replica = knobs.target_ongoing_requests
    else:
        batch = slo_capacity(
            best.profile,
            ttft_slo_s=params.ttft_slo_s,
            itl_slo_s=params.itl_slo_s,
            mean_prompt_tokens=demand.mean_prompt_tokens,
            mean_output_tokens=demand.mean_output_tokens,
        ).batch
        per_replica = max(1.0, batch * params.utilisation)
    desired = max(params.min_replicas, ceil_replicas(demand.in_flight / per_replica))
    if state is None:
        n, hold = desired, None
    else:
        n, hold = delayed(
            state.replicas,
            desired,
            state.hold,
            snapshot.now,
            up_delay_s=knobs.upscale_delay_s,
            down_delay_s=knobs.downscale_delay_s,
            observed_since=state.last_now,
        )
    note = f"in_flight={demand.in_flight} target/replica={per_replica:.3g} desired={desired}"
    plan = _finish(_fill_count(n, ranked), snapshot, ranked, demand, params, note=note)
    return plan, ReactiveState(n, hold, snapshot.now)


# ---------------------------------------------------------------------------------------------
# SpotHedge


@dataclass(frozen=True, slots=True)
class SpotHedgeState:
    """What SpotHedge remembers: the live spot replicas and spot targets of its last call (to
    tell pre-emptions from its own scale-downs), when each spot pool last lost a replica, and
    the on-demand fallback with its pending scale-down."""

    seen: Mapping[str, frozenset[str]]
    targets: Mapping[str, int]
    lost_at: Mapping[str, float]
    fallback: int
    hold: Hold | None
    last_now: float
    preemptions: int = 0


def _spread(
    need: float, pools: Sequence[Pool], demand: Demand, params: PlanParams, k: int, extra: int
) -> dict[str, int]:
    """``need`` rps split evenly over the ``k`` best-value ``pools`` (whole replicas, spilling
    over quotas to the next pools), then ``extra`` spare replicas one by one over them."""
    out = {p.name: 0 for p in pools}
    if not pools or need <= _EPS:
        return out
    chosen = list(pools[:k])
    rest = 0.0
    for pool in chosen:
        cap = replica_capacity(pool, demand, params)
        want = ceil_replicas(need / len(chosen) / cap)
        take = pool.offering.within_quota(want)
        out[pool.name] = take
        rest += (want - take) * cap
    if rest > _EPS:
        for name, n in cheapest_fill(rest, pools[k:], demand, params).items():
            out[name] += n
    spares = list(chosen)
    i = 0
    while extra > 0 and spares:
        pool = spares[i % len(spares)]
        if pool.offering.within_quota(out[pool.name] + 1) > out[pool.name]:
            out[pool.name] += 1
            extra -= 1
            i += 1
        else:
            spares.remove(pool)
    return out


def spot_hedge(
    snapshot: Snapshot, state: SpotHedgeState | None, params: PlanParams
) -> tuple[Plan, SpotHedgeState]:
    """Spot for the demand plus spares over several spot pools, on-demand for the gap left by
    lost spot capacity (see the module docstring)."""
    now = snapshot.now
    demand = _demand(snapshot)
    need = demand.rps * params.safety
    spot = by_value(_of_class(snapshot, CapacityClass.SPOT), demand, params)
    on_demand = by_value(_of_class(snapshot, CapacityClass.ON_DEMAND), demand, params)
    knobs = params.spot_hedge
    cooldown = knobs.spot_cooldown_s

    live: dict[str, list[str]] = {p.name: [] for p in spot}
    ready: dict[str, int] = {p.name: 0 for p in spot}
    for r in snapshot.replicas:
        if r.pool in live and r.state in _LIVE:
            live[r.pool].append(r.id)
            ready[r.pool] += r.state is ReplicaState.READY
    lost_at = dict(state.lost_at) if state else {}
    preemptions = state.preemptions if state else 0
    if state is not None:
        for pool in spot:
            seen = state.seen.get(pool.name, frozenset())
            asked = state.targets.get(pool.name, 0)
            gone = len(seen - set(live[pool.name]))
            preempted = max(0, gone - max(0, len(seen) - asked))
            preemptions += preempted
            if preempted or len(live[pool.name]) < asked:
                lost_at[pool.name] = now
    hot = [p for p in spot if now - lost_at.get(p.name, -math.inf) < cooldown]
    eligible = [p for p in spot if p not in hot]

    # Spot: hot pools keep what they still have, the rest of the demand goes to eligible pools.
    targets = {p.name: len(live[p.name]) for p in hot}
    held = math.fsum(len(live[p.name]) * replica_capacity(p, demand, params) for p in hot)
    spread = _spread(
        max(0.0, need - held),
        eligible,
        demand,
        params,
        knobs.spot_spread,
        knobs.spot_extra if need > 0 else 0,
    )
    targets.update(spread)

    # On-demand: the gap the ready spot replicas leave (on the first call, assume spot comes up).
    if state is None:
        covered = math.fsum(targets[p.name] * replica_capacity(p, demand, params) for p in spot)
    else:
        covered = math.fsum(ready[p.name] * replica_capacity(p, demand, params) for p in spot)
    gap = max(0.0, need - covered)
    wanted = ceil_replicas(gap / replica_capacity(on_demand[0], demand, params)) if on_demand else 0
    if state is None:
        fallback, hold = wanted, None
    else:
        fallback, hold = delayed(
            state.fallback,
            wanted,
            state.hold,
            now,
            up_delay_s=0.0,
            down_delay_s=knobs.fallback_downscale_delay_s,
            observed_since=state.last_now,
        )
    targets.update(_fill_count(fallback, on_demand))

    note = (
        f"need={need:.3g} rps; spot hot={[p.name for p in hot]}; ready spot carries "
        f"{covered:.3g}; on-demand fallback={fallback}"
    )
    plan = _finish(targets, snapshot, eligible + on_demand or spot, demand, params, note=note)
    new_state = SpotHedgeState(
        seen={p: frozenset(ids) for p, ids in live.items()},
        targets={p.name: plan.targets.get(p.name, 0) for p in spot},
        lost_at=lost_at,
        fallback=fallback,
        hold=hold,
        last_now=now,
        preemptions=preemptions,
    )
    return plan, new_state


# ---------------------------------------------------------------------------------------------
# Replaying a schedule


def schedule(
    plan_by_window: Sequence[Mapping[str, int] | Plan],
    window_s: float,
    *,
    start_s: float = 0.0,
    lead_s: float = 0.0,
) -> CapacityPolicy:
    """A policy that replays ``plan_by_window``: at ``now`` the targets of window
    ``floor((now - start_s) / window_s)`` (clamped to the schedule), for every pool of the
    snapshot (0 where the schedule names none).  No bounds, no cap: exactly the schedule.

    With ``lead_s > 0`` each pool gets the larger of its target now and ``lead_s`` ahead, so
    replicas are launched early enough to be ready (pass the slowest ``startup_s``) while
    scale-downs still happen on time.
    """
    if not plan_by_window:
        raise ValueError("an empty schedule")
    if window_s <= 0 or lead_s < 0:
        raise ValueError("window_s must be positive and lead_s not negative")
    plans = [dict(p.targets if isinstance(p, Plan) else p) for p in plan_by_window]

    def index(t: float) -> int:
        return min(max(math.floor((t - start_s) / window_s + _EPS), 0), len(plans) - 1)

    def policy(snapshot: Snapshot, state: None, params: PlanParams) -> tuple[Plan, None]:
        i = index(snapshot.now)
        now = plans[i]
        ahead = plans[index(snapshot.now + lead_s)] if lead_s > 0 else now
        targets = {p.name: max(now.get(p.name, 0), ahead.get(p.name, 0)) for p in snapshot.pools}
        return Plan(targets, (), f"schedule window {i}", plan_cost(targets, snapshot.pools)), None

    return policy


CAPACITY_POLICIES: dict[str, CapacityPolicy] = {
    "static_peak": static_peak,
    "static_mean": static_mean,
    "reactive": reactive,
    "spot_hedge": spot_hedge,
    "adaptive": adaptive,  # the forecast + MILP planner (core.adaptive)
}
