"""The reserved advisor: how many reserved replicas to commit to, and what that saves.

From weeks of demand history (one :class:`Demand` per window) and one model's pools — which
must include a reserved pool per accelerator to be considered (``Catalogue.pools(model,
classes=(RESERVED, ON_DEMAND, SPOT))``) — :func:`advise` answers with the classic rule, per
accelerator:

- ``n[t]``, the replicas of that accelerator window ``t`` needs at the SLO: demand × safety
  over one replica's planned capacity (:func:`~fleetpilot.core.capacity.replica_capacity`);
- a reserved replica pays for itself when it would otherwise run at least the *break-even*
  share of the time, ``reserved price / on-demand price``; so commit to the largest level
  exceeded in at least that share of windows.

It then prices strategies over the history, each window planned by the same MILP as the live
planner (:func:`~fleetpilot.core.mix.plan_mix`, perfect foresight: the window's demand is
the "forecast"):

- ``on_demand``: on-demand pools only;
- ``spot_fallback``: spot and on-demand, hedged (spread, losing the largest spot pool still
  holds the demand), nothing reserved;
- for each accelerator, its commitment, by the rule above against on-demand and also against
  the spot-with-fallback mix (whose average $ per replica-hour-equivalent replaces the
  on-demand price), with the mix planned around it (reserved used first).

The recommendation is the cheapest of these commitments, or none; so its savings against
both alternatives are never negative (up to the MILP's gap, set tight here).  Each window's
plan is cached by demand rounded up to a geometric grid (``resolution``), so weeks of
10-minute windows take a few hundred MILPs, not thousands; and the mix around a commitment
is priced only for the ``mix_candidates`` accelerators whose reserved replicas are cheapest
per unit of capacity.  A commitment is at most the reserved pool's quota; windows whose
demand the quotas cannot hold are counted in ``short_windows`` (their cost is that of the
capacity the quotas allow, so it understates).  The per-accelerator on-demand figures ignore
quotas (the classic rule has none).

Measured on the 14-day ServeGen series (``fleetpilot advise``, llama-3.1-8b, default
catalogue, which sets no quotas; the planner's default hedge, which covers a market event):
with spot at 17-51% of the on-demand price and reserved at 60%, the advice is to commit
nothing — hedged spot with on-demand fallback costs 61% less than on-demand (m-large $29.7k vs
$75.3k over the 14 days; m-small $177k vs $450k), and no commitment beats it.  Against
on-demand alone, the classic rule on the cheapest accelerator (L40S) commits 86 (m-large) /
553 (m-small) replicas and saves 26% / 28%.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from fleetpilot.core.capacity import PlanParams, replica_capacity
from fleetpilot.core.mix import plan_mix
from fleetpilot.core.model import CapacityClass, Demand, Pool, blend

__all__ = ["AcceleratorAdvice", "Advice", "advise", "commitment_level"]


@dataclass(frozen=True, slots=True)
class AcceleratorAdvice:
    """The classic answer for one accelerator: commit to ``reserved`` replicas of it."""

    accelerator: str
    reserved: int  # by break-even against on-demand
    break_even: float  # reserved price / on-demand price
    reserved_vs_spot: int  # by break-even against the spot-with-fallback mix
    cost_on_demand: float  # $ over the history, all on-demand on this accelerator
    cost_reserved: float  # $ with ``reserved`` committed, on-demand for the rest
    # $ with the better of the two commitments and the planner's mix for the rest (None: not
    # priced, the accelerator was not among the ``mix_candidates`` cheapest per capacity)
    cost_with_mix: float | None = None

    @property
    def saving(self) -> float:
        """Saving of ``reserved`` against all on-demand on this accelerator (a fraction)."""
        return 1.0 - self.cost_reserved / self.cost_on_demand if self.cost_on_demand else 0.0


@dataclass(frozen=True, slots=True)
class Advice:
    hours: float
    per_accelerator: tuple[AcceleratorAdvice, ...]
    commit: dict[str, int]  # the recommendation: reserved pool → replicas (empty: commit none)
    cost_on_demand: float  # $ over the history: on-demand pools only
    cost_spot_fallback: float  # $: hedged spot with on-demand fallback, nothing reserved
    cost_recommended: float  # $: the commitment, the planner's mix for the rest
    short_windows: int = 0  # windows whose demand the quotas could not hold (costs understate)

    @property
    def saving_vs_on_demand(self) -> float:
        return 1.0 - self.cost_recommended / self.cost_on_demand if self.cost_on_demand else 0.0

    @property
    def saving_vs_spot_fallback(self) -> float:
        if not self.cost_spot_fallback:
            return 0.0
        return 1.0 - self.cost_recommended / self.cost_spot_fallback


def commitment_level(needed: Sequence[int], break_even: float) -> int:
    """The largest level of replicas needed in at least ``break_even`` of the windows."""
    if not needed or break_even > 1:
        return 0
    ranked = sorted(needed, reverse=True)
    k = max(math.ceil(break_even * len(ranked) - 1e-9), 1)
    return ranked[k - 1]


def _quantised(d: Demand, resolution: float) -> Demand:
    """``d`` with its rps and mean lengths rounded up to a geometric grid ``resolution`` apart."""
    if d.rps <= 0:
        return Demand(rps=0.0, mean_prompt_tokens=1.0, mean_output_tokens=1.0)
    step = math.log1p(resolution)

    def up(x: float) -> float:
        return math.exp(math.ceil(math.log(max(x, 1e-9)) / step - 1e-9) * step)

    return Demand(
        rps=up(d.rps),
        mean_prompt_tokens=up(d.mean_prompt_tokens),
        mean_output_tokens=up(d.mean_output_tokens),
    )


class _Pricer:
    """$ per hour of the planner's mix over ``pools`` (``reserved`` committed), by demand."""

    def __init__(
        self, pools: Sequence[Pool], params: PlanParams, reserved: Mapping[str, int] | None = None
    ) -> None:
        self.pools, self.params, self.reserved = tuple(pools), params, dict(reserved or {})
        self.cache: dict[Demand, float] = {}
        self.short: dict[Demand, bool] = {}  # quotas could not hold this demand

    def __call__(self, d: Demand) -> float:
        if d not in self.cache:
            plan = plan_mix(self.pools, d, self.params, reserved=self.reserved)
            self.cache[d], self.short[d] = plan.cost_per_hour, bool(plan.shed)
        return self.cache[d]

    def total(self, history: Sequence[Demand], window_h: float) -> float:
        return sum(self(d) for d in history) * window_h


def advise(
    history: Sequence[Demand],
    window_s: float,
    pools: Sequence[Pool],
    params: PlanParams | None = None,
    *,
    resolution: float = 0.03,
    mix_candidates: int = 2,
) -> Advice:
    """Recommend reserved commitments for one model from its demand ``history``.

    Each window's demand is rounded up to a geometric grid ``resolution`` apart before it is
    planned (conservative; it bounds the number of distinct MILPs)."""
    params = replace(params or PlanParams(), spend_cap_per_hour=math.inf)
    if "mip_rel_gap" not in params.knobs:
        params = params.with_knobs({"mip_rel_gap": 1e-6})
    window_h = window_s / 3600.0
    hours = len(history) * window_h
    demand = [_quantised(d, resolution) for d in history]
    by_class = {
        cls: [p for p in pools if p.offering.capacity_class is cls and p.profile is not None]
        for cls in CapacityClass
    }
    flexible = by_class[CapacityClass.ON_DEMAND] + by_class[CapacityClass.SPOT]
    cost_od = _Pricer(by_class[CapacityClass.ON_DEMAND], params).total(demand, window_h)
    mix = _Pricer(flexible, params)
    cost_sf = mix.total(demand, window_h)
    short = sum(mix.short[d] for d in demand)
    seen = blend([d for d in history if d.rps > 0])
    typical = replace(seen, rps=1.0) if seen is not None else Demand(1.0, 0.0, 0.0)

    classic: list[tuple[float, Pool, AcceleratorAdvice]] = []
    for res in by_class[CapacityClass.RESERVED]:
        acc = res.offering.accelerator
        same = [p for p in by_class[CapacityClass.ON_DEMAND] if p.offering.accelerator == acc]
        if same:
            item = _classic(res, same[0], demand, window_h, cost_sf, params)
            per_capacity = res.offering.price_per_hour / replica_capacity(same[0], typical, params)
            classic.append((per_capacity, res, item))
    classic.sort(key=lambda c: (c[0], c[1].name))

    advice: list[AcceleratorAdvice] = []
    best: tuple[float, dict[str, int]] = (cost_sf, {})
    for rank, (_, res, item) in enumerate(classic):
        if rank < mix_candidates:
            mixes = {
                n: _Pricer([*flexible, res], params, {res.name: n}).total(demand, window_h)
                for n in sorted({item.reserved, item.reserved_vs_spot} - {0})
            }
            item = replace(item, cost_with_mix=min(mixes.values(), default=cost_sf))
            for n, cost in mixes.items():
                if cost < best[0] - 1e-9:
                    best = (cost, {res.name: n})
        advice.append(item)
    return Advice(
        hours=hours,
        per_accelerator=tuple(advice),
        commit=best[1],
        cost_on_demand=cost_od,
        cost_spot_fallback=cost_sf,
        cost_recommended=best[0],
        short_windows=short,
    )


def _classic(
    res: Pool,
    od: Pool,
    demand: Sequence[Demand],
    window_h: float,
    cost_sf: float,
    params: PlanParams,
) -> AcceleratorAdvice:
    """Break-even commitments on one accelerator, and their cost with on-demand for the rest."""
    needed = [_needed(od, d, params) for d in demand]
    hours = len(demand) * window_h
    replica_hours = sum(needed) * window_h
    reserved_price, od_price = res.offering.price_per_hour, od.offering.price_per_hour
    be = reserved_price / od_price
    n_od = res.offering.within_quota(commitment_level(needed, be))
    mix_price = cost_sf / replica_hours if replica_hours else math.inf
    n_sf = res.offering.within_quota(commitment_level(needed, reserved_price / mix_price))
    rest = sum(max(n - n_od, 0) for n in needed) * window_h
    return AcceleratorAdvice(
        accelerator=res.offering.accelerator,
        reserved=n_od,
        break_even=be,
        reserved_vs_spot=n_sf,
        cost_on_demand=od_price * replica_hours,
        cost_reserved=reserved_price * n_od * hours + od_price * rest,
    )


def _needed(pool: Pool, d: Demand, params: PlanParams) -> int:
    if d.rps <= 0:
        return 0
    cap = replica_capacity(pool, d, params)
    return max(math.ceil(d.rps * params.safety / cap - 1e-9), params.min_replicas)
