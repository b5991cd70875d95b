"""Shaping rules: what stands between the fleet a policy wants and the fleet it gets.

Each rule is a small pure function over targets (pool name → replicas), composed by the
policies in :mod:`fleetpilot.core.policies` and :mod:`fleetpilot.core.adaptive` (as Ray
Serve composes its scaling factors, bounds and delays):

* **bounds** (:func:`apply_bounds`): quotas, and ``min_replicas`` on the cheapest pool;
* **delays** (:func:`delayed`): a change of size acts only once it has held;
* **hold** (:func:`hold_demand`): the demand planned for is the largest of a sliding window;
* **churn** (:func:`bound_churn`): additions at once, removals a few a step;
* **mix hysteresis** (:func:`keep_mix`): a plan that opens pools must save enough to be taken;
* **drain to a reserve** (:func:`drain_to_reserve`): only a surplus above it goes at once;
* **make before break** (:func:`make_before_break`, and :func:`wait_for_ready` around any
  policy): no removal while the ready replicas that stay cannot carry the load;
* **spend cap** (:func:`trim_to_cap`, and :func:`apply_spend_cap` which also sheds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleetpilot.core.capacity import Plan, PlanParams, plan_cost, replica_capacity
from fleetpilot.core.mix import model_of
from fleetpilot.core.model import Demand, Pool, ReplicaState, ServiceClass, Snapshot, blend

__all__ = [
    "Hold",
    "apply_bounds",
    "apply_spend_cap",
    "bound_churn",
    "by_value",
    "ceil_replicas",
    "delayed",
    "drain_to_reserve",
    "hold_demand",
    "keep_mix",
    "make_before_break",
    "ready_replicas",
    "trim_to_cap",
    "wait_for_ready",
]

_EPS = 1e-9
_TOL = 1e-6


def ceil_replicas(x: float) -> int:
    """Round up, forgiving float noise (2.0000000001 replicas are 2)."""
    return max(math.ceil(x - _EPS), 0)


def by_value(pools: Sequence[Pool], demand: Demand, params: PlanParams) -> list[Pool]:
    """Pools that can carry load, cheapest per unit of planned capacity first."""
    caps = {p.name: replica_capacity(p, demand, params) for p in pools}
    usable = [p for p in pools if caps[p.name] > 0 and p.offering.within_quota(1)]
    return sorted(
        usable,
        key=lambda p: (p.offering.price_per_hour / caps[p.name], p.offering.price_per_hour, p.name),
    )


# ---------------------------------------------------------------------------------------------
# Bounds and delays


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


def hold_demand(
    window: tuple[tuple[float, float], ...], now: float, rps: float, hold_s: float
) -> tuple[tuple[tuple[float, float], ...], float]:
    """Sliding maximum of ``rps`` over the last ``hold_s`` seconds (entries that can never be
    the maximum again are dropped).  Returns the new window and the held rps."""
    kept = [(t, v) for t, v in window if t > now - hold_s and v > rps]
    kept.append((now, rps))
    return tuple(kept), max(v for _, v in kept)


# ---------------------------------------------------------------------------------------------
# Churn, mix and drain


def bound_churn(
    wanted: Mapping[str, int],
    current: Mapping[str, int],
    max_remove: int,
    price: Mapping[str, float],
) -> dict[str, int]:
    """Additions at once; at most ``max_remove`` replicas removed per step, priciest first."""
    out = {name: max(n, current.get(name, 0)) for name, n in wanted.items()}
    budget = max(max_remove, 0)
    for name in sorted(wanted, key=lambda n: (-price.get(n, 0.0), n)):
        drop = min(out[name] - wanted[name], budget)
        out[name] -= drop
        budget -= drop
    return out


def keep_mix(
    best: Plan,
    pools: Sequence[Pool],
    current: Mapping[str, int],
    band: float,
    plan_again: Callable[[Sequence[Pool]], Plan],
) -> Plan:
    """Hysteresis on the mix: when ``best`` opens a pool the fleet does not run, re-plan on
    the pools it runs (``plan_again`` over them, the others at quota 0) and keep that plan if
    it costs at most ``band`` more and sheds no more.

    Why: the mix is re-solved every step, and near a tie a small change of demand flips the
    cheapest mix.  On a fleet of a few replicas that is the whole fleet moving and back within
    minutes: every move pays for the new replicas' start-up while the old ones still serve,
    and the spot pre-emptions the hedge was sized for hit a fleet in transit.  Only mixes that
    add pools are held back; growing or shrinking the pools in use, and leaving a pool, are
    not.  A pool the fleet runs but that can no longer hold it (a spot market gone, a quota)
    makes the re-plan dearer or shed, so the switch then goes ahead."""
    running = {p.name for p in pools if current.get(p.name, 0) > 0}
    opens = any(best.targets.get(p.name, 0) > 0 and p.name not in running for p in pools)
    if band <= 0 or not opens or not running:
        return best
    closed = tuple(
        p if p.name in running else replace(p, offering=replace(p.offering, quota=0)) for p in pools
    )
    kept = plan_again(closed)
    if set(kept.shed) - set(best.shed) or kept.cost_per_hour > best.cost_per_hour * (1 + band):
        return best
    saving = 1.0 - best.cost_per_hour / kept.cost_per_hour if kept.cost_per_hour else 0.0
    return replace(kept, note=f"{kept.note}; mix kept (a switch would save {saving:.0%})")


def drain_to_reserve(
    shaped: Mapping[str, int],
    wanted: Mapping[str, int],
    capacity: Mapping[str, float],
    model_of: Mapping[str, str],
    reserve: Mapping[str, float],
    price: Mapping[str, float],
) -> dict[str, int]:
    """Remove at once, priciest per unit of capacity first, replicas kept beyond ``wanted`` as
    long as each model's capacity (``capacity`` per replica of a pool) stays at or above its
    ``reserve``: only the surplus above the reserve goes at once, the rest drains slowly."""
    out = dict(shaped)
    have: dict[str, float] = {}
    for name, n in out.items():
        have[model_of[name]] = have.get(model_of[name], 0.0) + n * capacity.get(name, 0.0)

    def worth(name: str) -> tuple[float, str]:
        cap = capacity.get(name, 0.0)
        return (-price.get(name, 0.0) / cap if cap > 0 else -math.inf, name)

    for name in sorted(out, key=worth):
        model, cap = model_of[name], capacity.get(name, 0.0)
        room = have[model] - reserve.get(model, math.inf)
        if cap <= 0 or room < cap - _TOL:
            continue
        drop = min(out[name] - wanted.get(name, 0), math.floor((room + _TOL) / cap))
        if drop > 0:
            out[name] -= drop
            have[model] -= drop * cap
    return out


# ---------------------------------------------------------------------------------------------
# Make before break


def ready_replicas(snapshot: Snapshot, current: Mapping[str, int]) -> dict[str, int]:
    """Ready replicas per pool; without replica views (a dry run) the current targets."""
    if not snapshot.sees_replicas:
        return dict(current)
    ready: dict[str, int] = {}
    for r in snapshot.replicas:
        if r.state is ReplicaState.READY:
            ready[r.pool] = ready.get(r.pool, 0) + 1
    return ready


def make_before_break(
    targets: Mapping[str, int],
    current: Mapping[str, int],
    snapshot: Snapshot,
    demand: Mapping[str, Sequence[Demand]],
    params: PlanParams,
) -> dict[str, int]:
    """``targets``, or with no removal at all (each pool at least ``current``) unless the
    replicas that are ready and stay carry each model's ``demand`` × ``safety``: when the mix
    changes, say from two L40S to one A100, the old replicas serve until the new ones are
    ready instead of leaving a start-up's worth of missing capacity."""
    if all(n >= current.get(name, 0) for name, n in targets.items()):
        return dict(targets)
    ready = ready_replicas(snapshot, current)
    for model, classes in demand.items():
        shape = blend(classes)
        if shape is None:
            continue
        carried = sum(
            min(targets.get(p.name, 0), ready.get(p.name, 0)) * replica_capacity(p, shape, params)
            for p in snapshot.pools
            if p.model == model
        )
        if carried < shape.rps * params.safety - _TOL:
            return {name: max(n, current.get(name, 0)) for name, n in targets.items()}
    return dict(targets)


def wait_for_ready(
    policy: Callable[[Snapshot, Any, PlanParams], tuple[Plan, Any]],
) -> Callable[[Snapshot, Any, PlanParams], tuple[Plan, Any]]:
    """``policy`` with :func:`make_before_break` on its plans, at the demand observed (for a
    policy that does not apply it itself, e.g. a baseline run live)."""

    def shaped(snapshot: Snapshot, state: Any, params: PlanParams) -> tuple[Plan, Any]:
        plan, state = policy(snapshot, state, params)
        current = {p.name: p.target for p in snapshot.pools}
        demand: dict[str, list[Demand]] = {}
        for key, d in snapshot.demand.items():  # a model, or a size class of one
            demand.setdefault(model_of(key), []).append(d)
        targets = make_before_break(plan.targets, current, snapshot, demand, params)
        if targets == plan.targets:
            return plan, state
        note = plan.note + "; removals wait for ready replicas to carry the load"
        return replace(
            plan, targets=targets, note=note, cost_per_hour=plan_cost(targets, snapshot.pools)
        ), state

    shaped.__name__ = getattr(policy, "__name__", "policy")
    return shaped


# ---------------------------------------------------------------------------------------------
# Spend cap


def trim_to_cap(
    targets: Mapping[str, int],
    pools: Sequence[Pool],
    cap: float,
    order: Sequence[str],
    keep: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Replicas removed from the pools in ``order`` (each down to ``keep``, default 0) until
    ``targets`` cost at most ``cap`` $/hour; free replicas are never removed."""
    price = {p.name: p.offering.price_per_hour for p in pools}
    out = {name: int(n) for name, n in targets.items()}
    cost = plan_cost(out, pools)
    for name in order:
        excess = cost - cap
        if excess <= _EPS:
            break
        if price.get(name, 0.0) <= 0 or name not in out:
            continue
        drop = min(out[name] - (keep or {}).get(name, 0), ceil_replicas(excess / price[name]))
        if drop > 0:
            out[name] -= drop
            cost -= drop * price[name]
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
    first (pools without a profile last), until the plan fits; interactive work is shed too
    when what is left cannot carry the interactive share.  The cap wins over ``min_replicas``.
    """
    cap = params.spend_cap_per_hour
    out = {p.name: int(targets.get(p.name, 0)) for p in pools}
    if plan_cost(out, pools) <= cap + _EPS:
        return Plan(out, (), note, plan_cost(out, pools))
    load = demand.rps if rps is None else rps
    interactive = load * (1.0 - demand.batch_share)
    if resize is not None and demand.batch_share > 0:
        resized = resize(interactive)
        out = {p.name: int(resized.get(p.name, 0)) for p in pools}
    ranked = [p.name for p in reversed(by_value(pools, demand, params))]
    order = ranked + [p.name for p in pools if p.name not in ranked]
    out = trim_to_cap(out, pools, cap, order)
    carried = math.fsum(out[p.name] * replica_capacity(p, demand, params) for p in pools)
    shed: tuple[ServiceClass, ...] = (ServiceClass.BATCH,)
    if carried < interactive - _EPS:
        shed = (ServiceClass.BATCH, ServiceClass.INTERACTIVE)
    capped = f"spend cap ${cap:.2f}/h binds: shedding {', '.join(s.value for s in shed)}"
    return Plan(out, shed, f"{note}; {capped}" if note else capped, plan_cost(out, pools))
