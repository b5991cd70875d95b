"""Baseline capacity policies and the small rules they are built from.

Every policy is a pure function ``policy(snapshot, state, params) -> (Plan, state)`` (see
:mod:`fleetpilot.core.capacity`); they are chosen by name from :data:`CAPACITY_POLICIES`:

``static_peak``
    On-demand only, sized once for the peak demand it is told about,
    ``params.extra["peak_rps"]`` (the engines pass the trace's peak: the fluid simulator does;
    a live controller has to be given it).  Without it, the first observed rate × ``safety``.
    It is sized at the first call that saw traffic (the request lengths size a replica);
    until then the fleet is kept as it is.
``static_mean``
    The same, sized for ``params.extra["mean_rps"]``: deliberate under-provisioning.
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

Knobs beyond :class:`~fleetpilot.core.capacity.PlanParams` come from ``params.extra`` under
the names above.  Sizing everywhere is :func:`pool_capacity`: ``slo_capacity`` at the
demand's mean lengths × ``utilisation`` requests/s per replica.  The rules are small
functions composed by each policy (as Ray composes scaling factors, bounds and delays):
:func:`cheapest_fill`, :func:`apply_bounds`, :func:`apply_spend_cap`, :func:`delayed`.

A plan names every pool of the snapshot (0 for those not used), because engines leave pools
that a plan does not mention at their old targets.  All pools given to one call must serve one
model.  An offering's ``quota`` is read as a number of replicas; an offering without one
(``None``, the default) has no limit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fleetpilot.core.capacity import Plan, PlanParams, knob, planned_capacity
from fleetpilot.core.model import (
    CapacityClass,
    Demand,
    Pool,
    Profile,
    ReplicaState,
    ServiceClass,
    Snapshot,
)
from fleetpilot.core.perf import step_time
from fleetpilot.core.planner import adaptive

__all__ = [
    "CAPACITY_POLICIES",
    "CapacityPolicy",
    "Hold",
    "ReactiveState",
    "SloTable",
    "SpotHedgeState",
    "StaticState",
    "apply_bounds",
    "apply_spend_cap",
    "cheapest_fill",
    "delayed",
    "plan_cost",
    "pool_capacity",
    "reactive",
    "replicas_needed",
    "schedule",
    "slo_table",
    "spot_hedge",
    "static_mean",
    "static_peak",
]

CapacityPolicy = Callable[[Snapshot, Any, PlanParams], tuple[Plan, Any]]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_EPS = 1e-9
_LIVE = (ReplicaState.STARTING, ReplicaState.READY)


# ---------------------------------------------------------------------------------------------
# Capacity at the SLO, for one shape or for many at once


@dataclass(frozen=True, slots=True)
class SloTable:
    """:func:`~fleetpilot.core.capacity.slo_capacity` evaluated elementwise: per shape, the
    operating batch, requests/s and step duration of one replica."""

    batch: IntArray
    requests_per_s: FloatArray
    step_s: FloatArray


@functools.lru_cache(maxsize=256)
def _step_times(profile: Profile) -> FloatArray:
    times = np.array([step_time(profile, b) for b in range(1, profile.max_batch + 1)])
    times.setflags(write=False)
    return times


def slo_table(
    profile: Profile,
    *,
    ttft_slo_s: float,
    itl_slo_s: float,
    mean_prompt_tokens: npt.ArrayLike,
    mean_output_tokens: npt.ArrayLike,
) -> SloTable:
    """``slo_capacity`` for arrays of mean lengths, with identical results (same arithmetic,
    same rule: the largest batch whose step and TTFT stay within target, every smaller batch
    within target too; a batch of one when even that misses).  Simulators size thousands of
    windows with it; policies use it for one shape."""
    prompt = np.atleast_1d(np.asarray(mean_prompt_tokens, dtype=np.float64))
    out = np.maximum(np.atleast_1d(np.asarray(mean_output_tokens, dtype=np.float64)), 1.0)
    prompt, out = np.broadcast_arrays(prompt, out)
    prefill = prompt / profile.prefill_rate
    steps = _step_times(profile)[:, None]
    batches = np.arange(1, profile.max_batch + 1, dtype=np.float64)[:, None]
    d = steps + (batches / out[None, :]) * prefill[None, :]
    ok = (d <= itl_slo_s) & (1.5 * d + prefill[None, :] <= ttft_slo_s)
    ok[0] = True
    batch = np.cumprod(ok, axis=0).sum(axis=0).astype(np.int64)
    chosen = d[batch - 1, np.arange(d.shape[1])]
    rps = (batch / out) / chosen
    return SloTable(batch=batch, requests_per_s=rps, step_s=chosen)


@functools.lru_cache(maxsize=256)
def _step_list(profile: Profile) -> tuple[float, ...]:
    return tuple(float(t) for t in _step_times(profile))


@functools.lru_cache(maxsize=8192)
def _slo_point(
    profile: Profile, ttft: float, itl: float, prompt: float, output: float
) -> tuple[int, float]:
    """(batch, requests/s) of ``slo_capacity`` for one shape, the same loop on cached steps."""
    out = max(output, 1.0)
    prefill_s = prompt / profile.prefill_rate
    best = (0, 0.0)
    for b, step in enumerate(_step_list(profile), start=1):
        d = step + (b / out) * prefill_s
        if b > 1 and (d > itl or 1.5 * d + prefill_s > ttft):
            break
        best = (b, (b / out) / d)
    return best


def pool_capacity(pool: Pool, demand: Demand, params: PlanParams) -> float:
    """Requests/s one replica of ``pool`` is planned to carry: its SLO capacity at
    ``demand``'s mean lengths × ``params.utilisation``, capped at its calibrated p99 rate
    (:func:`~fleetpilot.core.capacity.planned_capacity`; 0 for a pool without a profile)."""
    if pool.profile is None:
        return 0.0
    _, rps = _slo_point(
        pool.profile,
        params.ttft_slo_s,
        params.itl_slo_s,
        demand.mean_prompt_tokens,
        demand.mean_output_tokens,
    )
    return planned_capacity(
        pool.profile,
        params,
        mean_prompt_tokens=demand.mean_prompt_tokens,
        mean_output_tokens=demand.mean_output_tokens,
        analytic_rps=rps,
    )


def _ceil(x: float) -> int:
    """Round up, forgiving float noise (2.0000000001 replicas are 2)."""
    return max(math.ceil(x - _EPS), 0)


def replicas_needed(demand: Demand, pool: Pool, params: PlanParams) -> int:
    """Replicas of ``pool`` that carry ``demand.rps`` at the planned utilisation."""
    if demand.rps <= 0:
        return 0
    cap = pool_capacity(pool, demand, params)
    if cap <= 0:
        raise ValueError(f"pool {pool.name!r} has no profile: its capacity is unknown")
    return _ceil(demand.rps / cap)


def plan_cost(targets: Mapping[str, int], pools: Sequence[Pool]) -> float:
    """$/hour of ``targets`` (pools it does not name cost nothing)."""
    return math.fsum(targets.get(p.name, 0) * p.offering.price_per_hour for p in pools)


# ---------------------------------------------------------------------------------------------
# Composable rules


def _by_value(pools: Sequence[Pool], demand: Demand, params: PlanParams) -> list[Pool]:
    """Pools that can carry load, cheapest per unit of planned capacity first."""
    usable = [
        p for p in pools if pool_capacity(p, demand, params) > 0 and p.offering.within_quota(1)
    ]
    return sorted(
        usable,
        key=lambda p: (
            p.offering.price_per_hour / pool_capacity(p, demand, params),
            p.offering.price_per_hour,
            p.name,
        ),
    )


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
    caps = {p.name: pool_capacity(p, demand, params) for p in pools}
    ranked = _by_value(pools, demand, params)
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
                    _ceil(remaining / caps[p.name]) * p.offering.price_per_hour,
                    ranked.index(p),
                ),
            )
            targets[best.name] += _ceil(remaining / caps[best.name])
            break
        first = ranked.pop(0)  # it does not fit the rest, so it has a quota
        targets[first.name] += int(room[first.name])
        remaining -= room[first.name] * caps[first.name]
    return targets


def apply_bounds(
    targets: Mapping[str, int], pools: Sequence[Pool], params: PlanParams
) -> dict[str, int]:
    """Each target within ``[0, quota]``; at least ``params.min_replicas`` in all, the missing
    ones on the pool among ``pools`` with the lowest hourly price and room left."""
    offering = {p.name: p.offering for p in pools}
    out = {
        name: offering[name].within_quota(int(n)) if name in offering else max(int(n), 0)
        for name, n in targets.items()
    }
    missing = params.min_replicas - sum(out.values())
    for pool in sorted(pools, key=lambda p: (p.offering.price_per_hour, p.name)):
        if missing <= 0:
            break
        if pool.profile is None:
            continue
        add = pool.offering.within_quota(out.get(pool.name, 0) + missing) - out.get(pool.name, 0)
        if add > 0:
            out[pool.name] = out.get(pool.name, 0) + add
            missing -= add
    return out


def apply_spend_cap(
    targets: Mapping[str, int],
    pools: Sequence[Pool],
    demand: Demand,
    params: PlanParams,
    *,
    rps: float | None = None,
    resize: Callable[[float], Mapping[str, int]] | None = None,
    note: str = "",
) -> Plan:
    """The plan for ``targets``, never above ``params.spend_cap_per_hour``.

    When the cap binds, batch work is shed first: ``resize`` (if given) re-sizes for the
    interactive share of ``rps`` (the load ``targets`` were sized for; default
    ``demand.rps``).  If that still costs too much, replicas go, the least capacity per dollar
    first, until the plan fits; interactive work is shed too when what is left cannot carry
    the interactive share.  The cap wins over ``min_replicas``.
    """
    cap = params.spend_cap_per_hour
    out = {p.name: int(targets.get(p.name, 0)) for p in pools}
    cost = plan_cost(out, pools)
    if cost <= cap + _EPS:
        return Plan(out, (), note, cost)
    load = demand.rps if rps is None else rps
    interactive = load * (1.0 - demand.batch_share)
    if resize is not None and demand.batch_share > 0:
        resized = resize(interactive)
        out = {p.name: int(resized.get(p.name, 0)) for p in pools}
        cost = plan_cost(out, pools)
    for pool in reversed(_by_value(pools, demand, params)):
        excess = cost - cap
        if excess <= _EPS:
            break
        price = pool.offering.price_per_hour
        drop = min(out[pool.name], _ceil(excess / price) if price > 0 else 0)
        out[pool.name] -= drop
        cost -= drop * price
    for pool in pools:  # pools without a profile cannot be ranked by value; they go last
        if cost - cap <= _EPS:
            break
        price = pool.offering.price_per_hour
        drop = min(out[pool.name], _ceil((cost - cap) / price) if price > 0 else 0)
        out[pool.name] -= drop
        cost -= drop * price
    carried = math.fsum(out[p.name] * pool_capacity(p, demand, params) for p in pools)
    shed: tuple[ServiceClass, ...] = (ServiceClass.BATCH,)
    if carried < interactive - _EPS:
        shed = (ServiceClass.BATCH, ServiceClass.INTERACTIVE)
    capped = f"spend cap ${cap:.2f}/h binds: shedding {', '.join(s.value for s in shed)}"
    return Plan(out, shed, f"{note}; {capped}" if note else capped, plan_cost(out, pools))


@dataclass(frozen=True, slots=True)
class Hold:
    """A change of size waiting out its delay: its direction and since when it has held."""

    direction: int  # +1 up, -1 down
    since: float


def delayed(
    current: int,
    desired: int,
    hold: Hold | None,
    now: float,
    *,
    up_delay_s: float,
    down_delay_s: float,
    observed_since: float | None = None,
) -> tuple[int, Hold | None]:
    """Hysteresis: move from ``current`` to ``desired`` only once the wish has held in the
    same direction for the delay of that direction; until then keep ``current``.

    A wish first seen at ``now`` is dated from ``observed_since`` (the start of the interval
    whose observation showed it, normally the previous call's ``now``), and acts once it has
    held for *more* than the delay: with calls every ``I`` seconds that is after
    ``floor(delay / I) + 1`` calls, as Ray Serve's wait periods; a zero delay acts at once.
    """
    if desired == current:
        return current, None
    direction = 1 if desired > current else -1
    if hold is None or hold.direction != direction:
        hold = Hold(direction, now if observed_since is None else min(observed_since, now))
    delay = up_delay_s if direction > 0 else down_delay_s
    if delay <= 0 or now - hold.since > delay + _EPS:
        return desired, None
    return current, hold


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
        if key in params.extra:
            rps, note = float(params.extra[key]), f"{key}={params.extra[key]:.3g}"
        else:
            rps = demand.rps * params.safety
            note = f"no {key} given: sized for observed rps x safety = {rps:.3g}"

        def size(r: float) -> Mapping[str, int]:
            return cheapest_fill(r, on_demand, demand, params)

        plan = _finish(size(rps), snapshot, on_demand, demand, params, rps=rps, resize=size,
                       note=note)  # fmt: skip
        return plan, StaticState(plan, names)

    policy.__name__ = f"static_{key.removesuffix('_rps')}"
    policy.__doc__ = f"On-demand only, sized once for params.extra[{key!r}]."
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
    ranked = _by_value(_of_class(snapshot, CapacityClass.ON_DEMAND), demand, params)
    if not ranked:
        empty = Plan({p.name: 0 for p in snapshot.pools}, note="no on-demand pool")
        return empty, ReactiveState(0, None, snapshot.now)
    best = ranked[0]
    assert best.profile is not None
    if "target_ongoing_requests" in params.extra:
        per_replica = knob(params, "target_ongoing_requests", 1.0)
    else:
        batch, _ = _slo_point(
            best.profile,
            params.ttft_slo_s,
            params.itl_slo_s,
            demand.mean_prompt_tokens,
            demand.mean_output_tokens,
        )
        per_replica = max(1.0, batch * params.utilisation)
    desired = max(params.min_replicas, _ceil(demand.in_flight / per_replica))
    if state is None:
        n, hold = desired, None
    else:
        n, hold = delayed(
            state.replicas,
            desired,
            state.hold,
            snapshot.now,
            up_delay_s=knob(params, "upscale_delay_s", 30.0),
            down_delay_s=knob(params, "downscale_delay_s", 600.0),
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
        cap = pool_capacity(pool, demand, params)
        want = _ceil(need / len(chosen) / cap)
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
    spot = _by_value(_of_class(snapshot, CapacityClass.SPOT), demand, params)
    on_demand = _by_value(_of_class(snapshot, CapacityClass.ON_DEMAND), demand, params)
    cooldown = knob(params, "spot_cooldown_s", 1800.0)

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
    held = math.fsum(len(live[p.name]) * pool_capacity(p, demand, params) for p in hot)
    spread = _spread(
        max(0.0, need - held),
        eligible,
        demand,
        params,
        int(knob(params, "spot_spread", 2)),
        int(knob(params, "spot_extra", 1)) if need > 0 else 0,
    )
    targets.update(spread)

    # On-demand: the gap the ready spot replicas leave (on the first call, assume spot comes up).
    if state is None:
        covered = math.fsum(targets[p.name] * pool_capacity(p, demand, params) for p in spot)
    else:
        covered = math.fsum(ready[p.name] * pool_capacity(p, demand, params) for p in spot)
    gap = max(0.0, need - covered)
    wanted = _ceil(gap / pool_capacity(on_demand[0], demand, params)) if on_demand else 0
    if state is None:
        fallback, hold = wanted, None
    else:
        fallback, hold = delayed(
            state.fallback,
            wanted,
            state.hold,
            now,
            up_delay_s=0.0,
            down_delay_s=knob(params, "fallback_downscale_delay_s", 300.0),
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
    "adaptive": adaptive,  # the forecast + MILP planner (core.planner)
}
