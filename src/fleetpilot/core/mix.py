"""The mix program: the cheapest hedged mix of replicas per pool that holds a demand.

:func:`plan_mix` is a mixed-integer program (HiGHS through ``scipy.optimize.milp``) over the
pools of one or several models.  ``cap[p, c]`` is what one replica of pool ``p`` carries of
demand class ``c`` (a model, or one size class of it): :func:`~fleetpilot.core.capacity.
replica_capacity`, the rule every policy shares.  Integer ``x[p]`` replicas per pool,
continuous ``y[p, c]`` (replicas of ``p`` given to class ``c``)::

    minimise   Σ price[p] x[p]                     (reserved: 0, their cost is sunk)
    subject to Σ_c y[p, c] ≤ x[p]
               Σ_p cap[p, c] y[p, c] ≥ safety × D[c]                    (SLO capacity)
               z[c] ≥ Σ_spot p cap[p, c] (y[p, c] − k[p, c])      (a market event, below)
               Σ_p cap[p, c] y[p, c] − z[c] ≥ spot_loss_safety × E[c]   (lose it, still hold)
               zones[p] s[p] ≤ (zones[p] − 1) x[p],  Σ_c k[p, c] ≤ s[p]  (s[p] integer)
               spot capacity of p ≤ spot_max_share × all spot capacity  (spread)
               Σ x[p] ≥ min_replicas per model;  0 ≤ x[p] ≤ quota[p] (if any);
               x[p] = commitment for reserved pools (used first)

Zones.  A spot capacity pool is an instance type in one availability zone; a pool's replicas
are spread over ``offering.zones`` zones at most one apart (the Kubernetes actuator's zone
topology spread), so a market event takes its fullest zone, ``ceil(x / zones)`` replicas, not
the pool.  ``s[p]``, integer, is what is left of the pool then: ``zones · s ≤ (zones − 1) · x``
makes it at most ``x − ceil(x / zones)``, exactly (a single replica is all lost);  ``k[p, c]``
shares those survivors between the classes (the router re-balances), so the hedge stays
conservative with several classes.  With one zone ``s`` is 0 and the rows are the whole-pool
hedge (no ``s`` or ``k`` columns are made).

Market events.  Reclaims come as market events that take replicas in several zones and pools
within minutes, so by default (``spot_loss_market`` 1) ``z[c]`` is the fullest zone of *every*
spot pool together; with 0, the fullest zone of any one pool.

``D[c]`` is the planned demand; ``E[c]`` the demand expected while a lost pool's replacements
start (``expected``; never above ``D``): a spot pool lost *and* demand at its upper quantile
in the same few minutes are two rare events at once, and hedging both stacks them.

When that costs more than ``spend_cap_per_hour`` (or quotas cannot hold the demand), a second
program keeps the same constraints with the demand scaled by the served share
``u[c] + v[c]`` (``u`` the interactive part, ``v`` the batch part), adds ``cost ≤ cap``, and
maximises the interactive share first, then the batch share.  The plan sheds batch when batch
is not all served, and interactive too when interactive is not.  The cap is on the whole
fleet's $/hour, reserved included.

Size classes.  Short and long requests have different best accelerators (Mélange).  An engine
that measures demand by size reports it under :func:`size_key` (``"<model>|small"`` and
``"<model>|large"``, split at ``size_threshold_tokens``); each class is then planned with its
own mean lengths, and the program splits pools between them.

The knobs are :class:`~fleetpilot.core.knobs.MixKnobs` (``params.mix``).  How fast it solves
is ``bench/planner_speed.py``'s to say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp

from fleetpilot.core.capacity import Plan, PlanParams, plan_cost, replica_capacity
from fleetpilot.core.model import CapacityClass, Demand, Pool, ServiceClass

__all__ = [
    "SIZE_CLASSES",
    "DemandInput",
    "is_spot",
    "model_of",
    "plan_mix",
    "size_key",
    "size_threshold_tokens",
    "split_by_size",
]

SIZE_CLASSES = ("small", "large")
_SEP = "|"
_TOL = 1e-6

DemandInput = Demand | Sequence[Demand] | Mapping[str, Demand | Sequence[Demand]]


def size_key(model: str, size: str) -> str:
    """The ``snapshot.demand`` key under which an engine reports one size class of a model."""
    if size not in SIZE_CLASSES:
        raise ValueError(f"size must be one of {SIZE_CLASSES}")
    return f"{model}{_SEP}{size}"


def model_of(key: str) -> str:
    """The model a ``snapshot.demand`` key is for (itself, or a size class of it)."""
    return key.split(_SEP, 1)[0]


def size_threshold_tokens(params: PlanParams) -> int:
    """Prompt length (tokens) at or above which a request counts as large."""
    return params.mix.size_threshold_tokens


def split_by_size(demand_small: Demand, demand_large: Demand) -> tuple[Demand, ...]:
    """The demand classes to plan for one model whose traffic was measured by size: each keeps
    its own rps and mean lengths (empty classes are dropped)."""
    return tuple(d for d in (demand_small, demand_large) if d.rps > 0)


# ---------------------------------------------------------------------------------------------
# The mixed-integer program


@dataclass(frozen=True, slots=True)
class _Class:
    model: str
    name: str
    demand: Demand
    loss_rps: float  # the demand the capacity left after losing the largest spot pool carries


def _by_model(pools: Sequence[Pool], demand: DemandInput) -> dict[str, tuple[Demand, ...]]:
    if not isinstance(demand, Mapping):
        models = {p.model for p in pools}
        if len(models) > 1:
            raise ValueError(f"demand without model names for several models: {sorted(models)}")
        demand = {m: demand for m in models}
    return {m: (d,) if isinstance(d, Demand) else tuple(d) for m, d in sorted(demand.items())}


def _classes(
    pools: Sequence[Pool], demand: DemandInput, expected: DemandInput | None = None
) -> list[_Class]:
    by_model = _by_model(pools, demand)
    loss = _by_model(pools, expected) if expected is not None else by_model
    out: list[_Class] = []
    for model, ds in by_model.items():
        names = SIZE_CLASSES if len(ds) == len(SIZE_CLASSES) else tuple(map(str, range(len(ds))))
        hedge = loss.get(model, ds)
        if len(hedge) != len(ds):
            raise ValueError(f"expected demand of {model!r} does not match its demand classes")
        for i, one in enumerate(ds):
            name = model if len(ds) == 1 else f"{model}{_SEP}{names[i]}"
            out.append(_Class(model, name, one, min(hedge[i].rps, one.rps)))
    return out


class _Program:
    """Rows and columns of a MILP, built by name."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.derived: list[int] = []  # integer columns that follow the others (not rounded)
        self.survivors: dict[int, tuple[int, int]] = {}  # s column → (x column, zones)
        self.rows: list[dict[int, float]] = []
        self.row_lb: list[float] = []
        self.row_ub: list[float] = []

    def var(
        self, cost: float, lb: float, ub: float, integer: bool = False, derived: bool = False
    ) -> int:
        self.cost.append(cost)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(int(integer))
        self.derived.append(int(integer and derived))
        return len(self.cost) - 1

    def row(self, coeffs: dict[int, float], lb: float = -np.inf, ub: float = np.inf) -> None:
        self.rows.append(coeffs)
        self.row_lb.append(lb)
        self.row_ub.append(ub)

    def solve(
        self, gap: float, time_limit: float, *, round_up: bool
    ) -> npt.NDArray[np.float64] | None:
        """An optimal solution within ``gap``, or the best found in ``time_limit`` seconds.

        With ``round_up`` (every row stays satisfied when integer columns grow: true of the
        uncapped program, where continuous ``y`` carry the capacity and ``x`` only bound them)
        the LP relaxation is solved first and its integer columns rounded up.  When that costs
        within ``gap`` of the LP bound it is the answer, with no branching: large fleets, where
        one replica more or less per pool is noise.  Otherwise branch and bound runs with the
        rounded cost as a cutoff, and the rounded solution is the fallback if it runs out of
        time without a better one.  Survivors of a lost zone (``survivors``: ``s`` at most
        ``floor((zones - 1) x / zones)``) are not rounded up with the rest: ``x`` grows until
        that floor holds the survivors the LP counted on, and ``s`` is set to it, so every row
        still holds.  Should a quota stop ``x`` first, a second, small program sets the
        ``derived`` columns with the others fixed, and if none fits branch and bound runs
        with no cutoff.
        """
        if not self.cost:
            return np.zeros(0)
        a = np.zeros((len(self.rows), len(self.cost)))
        for i, coeffs in enumerate(self.rows):
            for j, v in coeffs.items():
                a[i, j] += v
        c, integer = np.asarray(self.cost), np.asarray(self.integer)
        bounds = Bounds(self.lb, self.ub)
        rows = [LinearConstraint(a, self.row_lb, self.row_ub)] if self.rows else []
        rounded: npt.NDArray[np.float64] | None = None
        if round_up:
            lp = milp(c, integrality=np.zeros_like(integer), bounds=bounds, constraints=rows)
            if lp.x is None or lp.status != 0:
                return None
            rounded = np.where(integer == 1, np.ceil(np.asarray(lp.x) - 1e-7), lp.x)
            rounded = np.minimum(rounded, self.ub)
            bound = float(lp.fun)
            derived = np.asarray(self.derived)
            if derived.any() and not self._round_survivors(rounded, np.asarray(lp.x)):
                rounded = self._repair(rounded, c, integer, derived, rows, time_limit)
            if rounded is not None:
                cost = float(c @ rounded)
                if cost <= bound + gap * abs(bound) + _TOL:
                    return rounded
                rows = [*rows, LinearConstraint(c, -np.inf, cost)]
        res = milp(
            c,
            integrality=integer,
            bounds=bounds,
            constraints=rows,
            options={"mip_rel_gap": gap, "time_limit": time_limit, "presolve": True},
        )
        if res.x is None or res.status not in (0, 1):  # 1: time limit with a feasible point
            return rounded
        return np.asarray(res.x, dtype=np.float64)

    def _round_survivors(
        self, rounded: npt.NDArray[np.float64], lp: npt.NDArray[np.float64]
    ) -> bool:
        """Grow each rounded ``x`` until ``floor((zones - 1) x / zones)`` holds the survivors
        the LP counted on, and set ``s`` to that (in place); False if a quota stops it."""
        for s, (col, zones) in self.survivors.items():
            need, x = math.ceil(lp[s] - 1e-7), int(rounded[col])
            while (zones - 1) * x // zones < need and x < self.ub[col]:
                x += 1
            if (zones - 1) * x // zones < need:
                return False
            rounded[col], rounded[s] = x, (zones - 1) * x // zones
        return True

    def _repair(
        self,
        rounded: npt.NDArray[np.float64],
        c: npt.NDArray[np.float64],
        integer: npt.NDArray[np.int_],
        derived: npt.NDArray[np.int_],
        rows: list[LinearConstraint],
        time_limit: float,
    ) -> npt.NDArray[np.float64] | None:
        """The rounded solution with the derived columns re-solved, or None if none fits."""
        fixed = (integer == 1) & (derived == 0)
        lb = np.where(fixed, rounded, self.lb)
        ub = np.where(fixed, rounded, self.ub)
        res = milp(
            c,
            integrality=derived,
            bounds=Bounds(lb, ub),
            constraints=rows,
            options={"time_limit": time_limit, "presolve": True},
        )
        if res.x is None or res.status != 0:
            return None
        return np.asarray(res.x, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class _Built:
    program: _Program
    x: dict[str, int]  # pool name → column
    served: dict[str, tuple[int, int]]  # class name → (interactive, batch) share columns


def _build(
    pools: Sequence[Pool],
    classes: Sequence[_Class],
    params: PlanParams,
    commitment: Mapping[str, int],
    *,
    capped: bool,
    budget: float,
) -> _Built:
    """The MILP of the module docstring; ``capped``: the second program (served shares)."""
    prog = _Program()
    reserved_cost = sum(p.offering.price_per_hour * commitment.get(p.name, 0) for p in pools)
    x: dict[str, int] = {}
    for p in pools:
        if p.offering.capacity_class is CapacityClass.RESERVED:
            n = p.offering.within_quota(commitment.get(p.name, 0))
            lb = 0.0 if capped and reserved_cost > budget else float(n)
            x[p.name] = prog.var(0.0, lb, float(n), integer=True)  # sunk: costs nothing more
        else:
            quota = math.inf if p.offering.quota is None else max(p.offering.quota, 0)
            x[p.name] = prog.var(p.offering.price_per_hour, 0.0, quota, integer=True)
    survivors: dict[str, int] = {}  # spot pool → its replicas outside its largest zone
    for p in pools:
        zones = _zones(p)
        if zones > 1:  # zones · s ≤ (zones - 1) · x: s = x - ceil(x / zones) at most
            q = p.offering.quota
            most = math.inf if q is None else max(q, 0) * (zones - 1) // zones
            s = survivors[p.name] = prog.var(0.0, 0.0, float(most), integer=True, derived=True)
            prog.survivors[s] = (x[p.name], zones)
            prog.row({s: float(zones), x[p.name]: -float(zones - 1)}, ub=0.0)

    total = sum(c.demand.rps for c in classes) or 1.0
    served: dict[str, tuple[int, int]] = {}
    shares: dict[int, dict[int, float]] = {}  # x column → {y column: capacity per replica}
    kept: dict[int, list[int]] = {}  # survivors column → the columns of it each class keeps
    for c in classes:
        if capped:  # served share of the class: u interactive (first), v batch
            bs = min(max(c.demand.batch_share, 0.0), 1.0)
            w = c.demand.rps / total
            served[c.name] = (prog.var(-100.0 * w, 0.0, 1.0 - bs), prog.var(-w, 0.0, bs))
        mine = [p for p in pools if p.model == c.model]
        ys = _class_rows(prog, mine, c, params, served.get(c.name, ()), survivors, kept)
        for name, (col, cap) in ys.items():
            shares.setdefault(x[name], {})[col] = cap
    for s, cols in kept.items():  # the survivors of a lost zone, shared out between classes
        prog.row({**dict.fromkeys(cols, 1.0), s: -1.0}, ub=0.0)
    for p in pools:  # Σ_c y[p, c] ≤ x[p]
        terms = shares.get(x[p.name], {})
        if terms:
            prog.row({**dict.fromkeys(terms, 1.0), x[p.name]: -1.0}, ub=0.0)
    max_share = params.mix.spot_max_share
    for model in sorted({p.model for p in pools}):
        spot = [shares[x[p.name]] for p in pools if p.model == model and is_spot(p)]
        _spread_rows(prog, [terms for terms in spot if terms], max_share)

    if capped:
        scale = (budget if math.isfinite(budget) else _max_cost(pools, classes, params)) or 1.0
        for p in pools:  # a tie-break: the cheapest way to the largest served share
            prog.cost[x[p.name]] = 1e-3 * p.offering.price_per_hour / scale
        if math.isfinite(budget):
            prog.row({x[p.name]: p.offering.price_per_hour for p in pools}, ub=budget)
    elif params.min_replicas > 0:
        for model in sorted({p.model for p in pools}):
            cols = [x[p.name] for p in pools if p.model == model]
            prog.row(dict.fromkeys(cols, 1.0), lb=float(params.min_replicas))
    return _Built(prog, x, served)


def _class_rows(
    prog: _Program,
    pools: Sequence[Pool],
    c: _Class,
    params: PlanParams,
    served: tuple[int, ...],
    survivors: Mapping[str, int],
    kept: dict[int, list[int]],
) -> dict[str, tuple[int, float]]:
    """Columns y[p, c] and the rows that size them: SLO capacity, and capacity left after
    losing the largest zone of a spot pool (the whole pool when it has one zone).  The demand
    is a constant, or (capped) ``rps × (u + v)``."""
    rps = c.demand.rps
    loss_share = c.loss_rps / rps if rps > 0 else 1.0
    ys: dict[str, tuple[int, float]] = {}
    for p in pools:
        cap = replica_capacity(p, c.demand, params)
        if cap > 0:
            ys[p.name] = (prog.var(0.0, 0.0, np.inf), cap)
    supply = dict(ys.values())

    def at_least(terms: dict[int, float], factor: float) -> None:
        if served:
            prog.row({**terms, **dict.fromkeys(served, -factor * rps)}, lb=0.0)
        else:
            prog.row(terms, lb=factor * rps)

    at_least(supply, params.safety)
    spot = [p.name for p in pools if p.name in ys and is_spot(p)]
    if rps > 0:
        largest: dict[int, float] = {}
        if spot:
            # z ≥ what one spot event takes: the largest zone of any one pool, or with
            # spot_loss_market the largest zone of every pool at once (a market-wide event)
            z = prog.var(0.0, 0.0, np.inf)
            losses = []  # per spot pool, cap · (y - k): k of its zone's survivors kept
            for name in spot:
                col, cap = ys[name]
                loss = {col: -cap}
                if name in survivors:
                    k = prog.var(0.0, 0.0, np.inf)
                    kept.setdefault(survivors[name], []).append(k)
                    loss[k] = cap
                losses.append(loss)
            if params.mix.spot_loss_market > 0:
                losses = [{col: v for loss in losses for col, v in loss.items()}]  # all at once
            for loss in losses:
                prog.row({z: 1.0, **loss}, lb=0.0)
            largest = {z: -1.0}
        loss_safety = params.mix.spot_loss_safety
        at_least({**supply, **largest}, loss_safety * loss_share)
    return ys


def _spread_rows(prog: _Program, spot: Sequence[Mapping[int, float]], max_share: float) -> None:
    """No spot pool above ``max_share`` of the spot capacity (at least an equal split)."""
    if len(spot) < 2:
        return
    share = max(max_share, 1.0 / len(spot))
    everything = {col: -share * cap for terms in spot for col, cap in terms.items()}
    for terms in spot:
        row = dict(everything)
        for col, cap in terms.items():
            row[col] += cap
        prog.row(row, ub=0.0)


def is_spot(pool: Pool) -> bool:
    return pool.offering.capacity_class is CapacityClass.SPOT


def _zones(pool: Pool) -> int:
    """Zones a spot pool's replicas are spread over (1 for other classes: not hedged by zone)."""
    return max(pool.offering.zones, 1) if is_spot(pool) else 1


def _max_cost(pools: Sequence[Pool], classes: Sequence[_Class], params: PlanParams) -> float:
    """$/hour of every pool at its quota, a pool without one at the replicas that would carry
    all its model's demand alone: what the capped program's tie-break is scaled by."""
    total = 0.0
    for p in pools:
        if p.offering.quota is not None:
            n = float(max(p.offering.quota, 0))
        else:
            n = 0.0
            for c in classes:
                cap = replica_capacity(p, c.demand, params) if c.model == p.model else 0.0
                if cap > 0:
                    n += params.safety * c.demand.rps / cap
        total += p.offering.price_per_hour * n
    return total


def plan_mix(
    pools: Sequence[Pool],
    demand: DemandInput,
    params: PlanParams | None = None,
    *,
    reserved: Mapping[str, int] | None = None,
    expected: DemandInput | None = None,
) -> Plan:
    """The cheapest hedged mix of replicas that holds ``demand`` (already the forecast's upper
    quantile; ``params.safety`` is applied here) within quotas and the spend cap.

    ``demand`` is, for pools of one model, a :class:`Demand` or a sequence of demand classes
    (e.g. :func:`split_by_size`); for several models, a mapping model → either.  ``reserved``
    maps reserved pools to the replicas already bought (default: their current ``target``).
    ``expected``, in the same shape as ``demand``, is the demand the fleet must still carry
    after losing its largest spot pool, while replacements start (default: ``demand``; each
    class is taken at no more than its ``demand``).  Pools without a profile keep their
    target, and their cost counts against the cap.
    """
    params = params or PlanParams()
    planned = [p for p in pools if p.profile is not None]
    fixed = {p.name: p.target for p in pools if p.profile is None}
    commitment = dict(reserved) if reserved is not None else {}
    for p in planned:
        if p.offering.capacity_class is CapacityClass.RESERVED and reserved is None:
            commitment[p.name] = p.target
    classes = _classes(planned, demand, expected)
    budget = params.spend_cap_per_hour - plan_cost(fixed, pools)
    gap = params.mix.mip_rel_gap
    limit = params.mix.time_limit_s

    built = _build(planned, classes, params, commitment, capped=False, budget=budget)
    sol = built.program.solve(gap, limit, round_up=True)
    shed: tuple[ServiceClass, ...] = ()
    served_note = ""
    if sol is None or plan_cost(_targets(built, sol), planned) > budget + _TOL:
        built = _build(planned, classes, params, commitment, capped=True, budget=max(budget, 0))
        sol = built.program.solve(min(gap, 1e-4), limit, round_up=False)
        if sol is None:  # cannot happen (all zero is feasible) unless the solver gives up
            sol = np.zeros(len(built.program.cost))
        shed, served_note = _shed(classes, built, sol)
    targets = {**fixed, **_targets(built, sol)}
    note = _note(planned, classes, targets, params) + served_note
    return Plan(targets=targets, shed=shed, note=note, cost_per_hour=plan_cost(targets, pools))


def _targets(built: _Built, sol: npt.NDArray[np.float64]) -> dict[str, int]:
    return {name: round(float(sol[col])) for name, col in built.x.items()}


def _shed(
    classes: Sequence[_Class], built: _Built, sol: npt.NDArray[np.float64]
) -> tuple[tuple[ServiceClass, ...], str]:
    interactive_short = batch_short = False
    served = wanted = 0.0
    for c in classes:
        if c.name not in built.served or c.demand.rps <= 0:
            continue
        u, v = (float(sol[i]) for i in built.served[c.name])
        bs = min(max(c.demand.batch_share, 0.0), 1.0)
        interactive_short |= u < (1 - bs) * (1 - 1e-4) - _TOL
        batch_short |= v < bs * (1 - 1e-4) - _TOL
        served += (u + v) * c.demand.rps
        wanted += c.demand.rps
    share = served / wanted if wanted else 1.0
    if interactive_short:
        return (ServiceClass.BATCH, ServiceClass.INTERACTIVE), f"; capped: serves {share:.0%}"
    if batch_short:
        return (ServiceClass.BATCH,), f"; capped: serves {share:.0%}, sheds batch"
    return (), f"; capped: serves {share:.0%}"


def _note(
    pools: Sequence[Pool], classes: Sequence[_Class], targets: Mapping[str, int], p: PlanParams
) -> str:
    used = [f"{pl.name}={targets[pl.name]}" for pl in pools if targets.get(pl.name, 0) > 0]
    text = "mix " + (", ".join(used) or "empty")
    sized = [c for c in classes if _SEP in c.name]
    if sized:
        total = sum(c.demand.rps for c in sized) or 1.0
        parts = [f"{c.name} {c.demand.rps / total:.0%}" for c in sized]
        text += f"; size mix (threshold {size_threshold_tokens(p)} tok): " + ", ".join(parts)
    return text
