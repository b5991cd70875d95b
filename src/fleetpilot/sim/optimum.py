"""The offline optimum: the cheapest fleet per window with perfect knowledge, a lower bound.

Given the demand of every window and the spot capacity of every window in advance, the
cheapest schedule is the integer program::

    minimise    Σ_w Σ_p price[p] · window_hours · x[w, p]
    subject to  Σ_p cap[w, p] · x[w, p] ≥ rps[w]          (carry the demand at the SLO)
                Σ_p x[w, p] ≥ min_replicas
                0 ≤ x[w, p] ≤ min(quota[p], spot_available[w, p])   integer (if given)

``cap[w, p]`` is what the policies plan with (:func:`~fleetpilot.core.capacity.replica_capacity`,
the rule they share) at window ``w``'s mean lengths, so any policy schedule that
carries a window's demand at that utilisation costs at least the optimum's window: the bound is
fair.  Spot capacity per window comes from an optional per-pool series (unlimited, i.e. the
quota or no bound, when not given).

Assumptions of the bound: replicas appear and vanish at window boundaries with no start-up
lead time and no pre-emption inside a window (a spot series gives the count that survives the
whole window); demand is the window's mean rate (no headroom for bursts inside it); no spend
cap; no coupling between windows (no reserved commitment held across them).

Speed.  With no coupling the windows are independent, so the program splits into one small
covering knapsack per window (one variable per pool).  Two exact shortcuts keep 14 days of
10-minute windows (2,016 windows × ~10 pools) within about a second:

* windows with the same capacities and bounds (e.g. constant mean lengths) are solved in order
  of rising demand, and a window reuses the last solution when that one already carries it
  (the optimal cost is monotone in demand, so the reused solution is optimal);
* each remaining window is solved by a depth-first branch and bound over pools ordered by
  price per unit capacity, bounded by the fractional (LP) relaxation — exact, and ~0.1 ms per
  window in Python where one ``scipy.optimize.milp`` (HiGHS) call costs ~5-10 ms.

``method="highs"`` solves each window with ``scipy.optimize.milp`` instead (same program, same
shortcuts): tests check the two agree, and against brute force on tiny instances.

The bound keeps no insurance: it runs the cheapest spot pool alone, and losing that pool loses
the service.  :func:`hedged_optimum` is the second yardstick: perfect knowledge that keeps the
planner's spot-loss hedge and spread, i.e. the planner's own program per window at the actual
demand.  The first is what no schedule beats; the second what no schedule that keeps the
hedge beats (to within the planner's MILP gap), so a policy's cost over it is the price of not
knowing the future alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp

from fleetpilot.core.capacity import PlanParams
from fleetpilot.core.mix import plan_mix
from fleetpilot.core.model import CapacityClass, Demand, Pool
from fleetpilot.sim.fluid import NO_LIMIT, WindowSeries, capacity_table, upper_bounds

__all__ = ["OptimumResult", "hedged_optimum", "offline_optimum", "solve_window"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_TOL = 1e-9


# ---------------------------------------------------------------------------------------------
# One window


def _bnb(
    price: Sequence[float], cap: Sequence[float], upper: Sequence[int], need: float, count: int
) -> tuple[list[int], float] | None:
    """Exact min Σ price·x s.t. Σ cap·x ≥ need, Σ x ≥ count, 0 ≤ x ≤ upper, x integer."""
    order = sorted(range(len(price)), key=lambda i: (price[i] / cap[i], price[i], i))
    c = [price[i] for i in order]
    a = [cap[i] for i in order]
    u = [upper[i] for i in order]
    n = len(order)
    suffix_cap = [0.0] * (n + 1)
    suffix_n = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        suffix_cap[i] = suffix_cap[i + 1] + a[i] * u[i]
        suffix_n[i] = suffix_n[i + 1] + u[i]
    by_price = sorted(range(n), key=lambda i: c[i])

    def lb_cap(i: int, r: float) -> float:
        total = 0.0
        for j in range(i, n):
            if r <= 0:
                break
            take = min(u[j] * a[j], r)
            total += take / a[j] * c[j]
            r -= take
        return total

    def lb_count(i: int, m: int) -> float:
        total = 0.0
        for j in by_price:
            if m <= 0:
                break
            if j >= i:
                take = min(u[j], m)
                total += take * c[j]
                m -= take
        return total

    best_cost = math.inf
    best: list[int] = []
    x = [0] * n

    def dfs(i: int, r: float, m: int, spent: float) -> None:
        nonlocal best_cost, best
        if i == n - 1:
            k = max(math.ceil(r / a[i]) if r > 0 else 0, m, 0)
            if k <= u[i] and spent + k * c[i] < best_cost:
                x[i] = k
                best_cost, best = spent + k * c[i], list(x)
            return
        cover = math.ceil(r / a[i]) if r > 0 else 0
        for k in range(min(u[i], max(cover, m)), -1, -1):
            r_next, m_next = r - k * a[i], m - k
            if suffix_cap[i + 1] < r_next or suffix_n[i + 1] < m_next:
                break  # fewer of this pool only makes the rest harder
            floor = spent + k * c[i]
            if floor + lb_cap(i + 1, r_next) >= best_cost:
                if r_next > 0:
                    break  # from here on each replica fewer costs more in the bound
                continue
            if floor + lb_count(i + 1, m_next) >= best_cost:
                continue
            x[i] = k
            dfs(i + 1, r_next, m_next, floor)
        x[i] = 0

    dfs(0, need, count, 0.0)
    if not best:
        return None
    out = [0] * n
    for pos, i in enumerate(order):
        out[i] = best[pos]
    return out, best_cost


def _highs(
    price: Sequence[float], cap: Sequence[float], upper: Sequence[int], need: float, count: int
) -> tuple[list[int], float] | None:
    n = len(price)
    res = milp(
        np.asarray(price, dtype=np.float64),
        constraints=LinearConstraint(np.vstack([cap, np.ones(n)]), [need, count], np.inf),
        integrality=np.ones(n),
        bounds=Bounds(np.zeros(n), np.asarray(upper, dtype=np.float64)),
        options={"mip_rel_gap": 0.0},
    )
    if res.x is None:
        return None
    x = [round(v) for v in res.x]
    return x, math.fsum(p * k for p, k in zip(price, x, strict=True))


def solve_window(
    price: Sequence[float],
    cap: Sequence[float],
    upper: Sequence[int],
    need: float,
    count: int = 0,
    *,
    method: Literal["bnb", "highs"] = "bnb",
) -> tuple[list[int], float] | None:
    """The cheapest whole replicas per pool for one window (None when the bounds cannot carry
    ``need``): min Σ price·x s.t. Σ cap·x ≥ need, Σ x ≥ count, 0 ≤ x ≤ upper."""
    if any(c <= 0 for c in cap):
        raise ValueError("every pool needs a positive capacity")
    need = max(need - _TOL * max(1.0, need), 0.0)
    solver = _bnb if method == "bnb" else _highs
    return solver(price, cap, upper, need, count)


# ---------------------------------------------------------------------------------------------
# All windows


@dataclass(frozen=True)
class OptimumResult:
    """The optimum schedule: ``targets[w, p]`` replicas of ``pool_names[p]`` in window ``w``.

    ``feasible[w]`` is False where even every replica the bounds allow cannot carry the
    demand; those windows run every allowed replica and their cost is still counted.
    """

    pool_names: tuple[str, ...]
    capacity_classes: tuple[CapacityClass, ...]
    window_s: float
    targets: IntArray
    capacity: FloatArray  # planned rps per replica, (windows, pools)
    price_per_hour: FloatArray  # (pools,)
    demand_rps: FloatArray
    feasible: npt.NDArray[np.bool_]
    solved: int  # windows that needed a solver call (the rest reused a solution)

    @property
    def cost_per_hour(self) -> FloatArray:
        return np.asarray(self.targets @ self.price_per_hour, dtype=np.float64)

    @property
    def cost(self) -> FloatArray:
        """$ per window."""
        return self.cost_per_hour * (self.window_s / 3600.0)

    @property
    def total_cost(self) -> float:
        return float(self.cost.sum())

    def replica_hours_by_class(self) -> dict[str, float]:
        hours = self.targets.sum(axis=0) * (self.window_s / 3600.0)
        out = {c.value: 0.0 for c in CapacityClass}
        for cls, h in zip(self.capacity_classes, hours, strict=True):
            out[cls.value] += float(h)
        return out

    def plans(self) -> list[dict[str, int]]:
        """Targets per window by pool name, for :func:`~fleetpilot.core.policies.schedule`."""
        return [
            {name: int(n) for name, n in zip(self.pool_names, row, strict=True)}
            for row in self.targets
        ]


def offline_optimum(
    series: WindowSeries,
    pools: Sequence[Pool],
    params: PlanParams | None = None,
    *,
    spot_available: Mapping[str, Sequence[int]] | None = None,
    method: Literal["bnb", "highs"] = "bnb",
) -> OptimumResult:
    """The cheapest schedule that carries every window of ``series`` (see the module)."""
    params = params or PlanParams()
    if not pools:
        raise ValueError("no pools")
    windows = len(series.rps)
    cap = capacity_table(series, pools, params)
    upper = upper_bounds(pools, windows, spot_available)
    price = [p.offering.price_per_hour for p in pools]
    demand = np.asarray(series.rps, dtype=np.float64)
    targets = np.zeros((windows, len(pools)), dtype=np.int64)
    feasible = np.ones(windows, dtype=np.bool_)
    groups: dict[bytes, list[int]] = {}
    for w in range(windows):
        groups.setdefault(cap[w].tobytes() + upper[w].tobytes(), []).append(w)
    solved = 0
    for members in groups.values():
        members.sort(key=lambda w: (demand[w], w))
        last: list[int] | None = None
        last_carries = -math.inf
        for w in members:
            need = float(demand[w])
            if last is not None and last_carries >= need - _TOL * max(1.0, need):
                targets[w] = last
                continue
            solved += 1
            found = solve_window(
                price, list(cap[w]), list(upper[w]), need, params.min_replicas, method=method
            )
            if found is None:
                feasible[w] = False
                targets[w] = upper[w]
                continue
            last = found[0]
            last_carries = float(np.dot(cap[w], last))
            targets[w] = last
    return OptimumResult(
        pool_names=tuple(p.name for p in pools),
        capacity_classes=tuple(p.offering.capacity_class for p in pools),
        window_s=float(series.window_s),
        targets=targets,
        capacity=cap,
        price_per_hour=np.asarray(price, dtype=np.float64),
        demand_rps=demand,
        feasible=feasible,
        solved=solved,
    )


def hedged_optimum(
    series: WindowSeries,
    pools: Sequence[Pool],
    params: PlanParams | None = None,
    *,
    spot_available: Mapping[str, Sequence[int]] | None = None,
    ready: Sequence[float] | None = None,
    mip_rel_gap: float = 1e-3,
) -> OptimumResult:
    """Perfect knowledge that keeps the spot-loss hedge: per window, the adaptive planner's own
    mix program (:func:`~fleetpilot.core.mix.plan_mix`) at the window's actual demand.

    :func:`offline_optimum` bounds what any schedule pays, but it keeps no insurance: it puts
    the fleet in the cheapest spot pool, so losing that pool loses the service.  The issue
    that asks for the 1.15 × optimum target also asks every plan to keep "enough on-demand
    fallback that losing the largest spot pool still leaves the SLO met" and to spread spot
    over pools; this is the cheapest schedule that does, with ``params``' hedge knobs
    (``spot_loss_market``, ``spot_loss_safety``, ``spot_max_share``, ...) and no forecast
    error, no surge floor, no start-up and ``safety`` 1.  So a policy's cost splits into the
    optimum × the hedge's premium (this over the optimum: a choice of insurance) × the price
    of not knowing the future (the policy over this).

    Each window's program is solved to ``mip_rel_gap`` (0.1%), not the planner's 2%: a
    yardstick solved loosely reads high and flatters the policy (at 2% it read 0.6% higher on
    ServeGen m-large, 0.2% on m-small).  Windows with the same demand, lengths and bounds share
    one solve.  ``feasible`` is False where the hedged program cannot carry the window within
    the bounds (the plan sheds; its cost is still counted).  About 35 s for 14 days of
    10-minute windows (ServeGen m-large or m-small); 3-13 s at 2%.

    ``ready`` (requests/s per window, planned capacity) is demand each window must also be
    planned for although it does not come, e.g. a surge floor a causal policy keeps; the
    hedge still covers only the demand that comes.
    """
    params = params or PlanParams()
    if not pools:
        raise ValueError("no pools")
    yardstick = replace(params, safety=1.0, spend_cap_per_hour=math.inf).with_knobs(
        {"mip_rel_gap": mip_rel_gap}
    )
    windows = len(series.rps)
    upper = upper_bounds(pools, windows, spot_available)
    names = [p.name for p in pools]
    targets = np.zeros((windows, len(pools)), dtype=np.int64)
    feasible = np.ones(windows, dtype=np.bool_)
    if ready is not None and len(ready) != windows:
        raise ValueError(f"ready has {len(ready)} windows, the series {windows}")
    solved: dict[tuple[float, float, float, float, bytes], tuple[list[int], bool]] = {}
    for w in range(windows):
        d = Demand(
            rps=float(series.rps[w]),
            mean_prompt_tokens=float(series.mean_prompt_tokens[w]),
            mean_output_tokens=float(series.mean_output_tokens[w]),
        )
        held = max(d.rps, float(ready[w])) if ready is not None else d.rps
        key = (d.rps, held, d.mean_prompt_tokens, d.mean_output_tokens, upper[w].tobytes())
        if key not in solved:
            within = [  # this window's bound (quota, spot availability) as the pool's quota
                replace(p, offering=replace(p.offering, quota=int(u))) if u < NO_LIMIT else p
                for p, u in zip(pools, upper[w], strict=True)
            ]
            plan = plan_mix(within, replace(d, rps=held), yardstick, expected=d)
            solved[key] = ([plan.targets.get(n, 0) for n in names], not plan.shed)
        targets[w], feasible[w] = solved[key]
    return OptimumResult(
        pool_names=tuple(names),
        capacity_classes=tuple(p.offering.capacity_class for p in pools),
        window_s=float(series.window_s),
        targets=targets,
        capacity=capacity_table(series, pools, params),
        price_per_hour=np.asarray([p.offering.price_per_hour for p in pools], dtype=np.float64),
        demand_rps=np.asarray(series.rps, dtype=np.float64),
        feasible=feasible,
        solved=len(solved),
    )
