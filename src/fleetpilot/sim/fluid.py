"""Window-level (fluid) simulation: weeks of traffic in a second, through the same policies.

Traffic is a series of windows (rate, mean lengths, burstiness; :class:`WindowSeries`, which
:class:`fleetpilot.core.series.RateSeries` satisfies).  Time is seconds from the start of the
series.  At the start of every ``control_every``-th window the capacity policy is called with
a :class:`~fleetpilot.core.model.Snapshot`: the pools with their targets, the replicas
(starting or ready), and ``demand[model]`` as observed over the window before (rate, mean
lengths, ``batch_share``, and ``in_flight`` by Little's law: served rate × service time plus
the queue).  ``params.static`` gets the series' ``peak_rps`` and ``mean_rps`` unless it has
them, as the static policies expect.

The fleet.  Each pool is kept at its target, as a Deployment or node group would keep it:
extra replicas go at once (starting ones first, newest first; draining is instant), missing
ones are launched and become ready ``offering.startup_s`` later.  A replica costs its price
from launch until it goes.  The first plan's replicas are ready at t=0 (``warm_start``: the
fleet existed before the trace).  Spot: ``preemptions[pool]`` lists times at which one replica
of the pool is lost (a ready one, the oldest, else a starting one) and a replacement is
launched at once; ``spot_available[pool][w]`` caps the pool's replicas in window ``w`` (excess
replicas are lost at the window's start, launches beyond it fail; the policy sees the pool
short of its target).  That series hits the whole pool at once.  A pool whose replicas are
spread over availability zones (``offering.zones``) can instead get one series per zone,
``spot_zones[pool][k][w]`` (replicas zone ``k`` can hold in window ``w``).  Its replicas are
then counted per zone as the Kubernetes actuator's zone spread (maxSkew 1, ``DoNotSchedule``)
places them (:func:`spread_counts`): a zone keeps at most what its series allows, so a drop
takes that zone's pods only; a new pod goes to an emptiest zone that has room, so while a
zone is empty the others cannot grow past one pod more than it (the rest stay pending: the
policy sees the pool short).  :func:`fleetpilot.sim.spot.window_spot` makes both from a spot
map (which trace describes which pool or zone).

Service.  A ready replica carries up to its SLO capacity (``slo_capacity`` at the window's true
mean lengths, *not* × utilisation: that is planning headroom) with ``b`` KV slots busy, ``b``
the SLO batch.  Each window is cut into ``substeps``; per substep the fleet is an M/G/c queue
whose servers are the ready slots (c = Σ replicas × b, service time out × step) with
capacity ``C`` requests/s:

* below capacity (λ < C, no backlog): waiting by the Allen-Cunneen approximation, the Erlang-C
  probability of waiting (continuous in c) with an exponential tail
  ``P(W > t) = P_wait · exp(-(C - λ) t · 2 / (ca² + cs²))`` — ``ca`` is the window's
  inter-arrival cv, ``cs²`` the service-time SCV (``service_scv``, 1 by default).  A fleet
  of many slots hardly queues until it is nearly full, then fast, as real fleets do;
* at or above capacity, or with a backlog: a fluid queue.  The backlog grows at λ - C (falls
  at C - λ); a request waits backlog / C.  The gateway sheds what it cannot serve in time, so
  the backlog is capped at what can still start within ``shed_factor`` × the TTFT target,
  ``C · (shed_factor · ttft_slo - base TTFT)``; arrivals beyond it are shed, and so is the
  part of the M/G/c waiting tail beyond that horizon.  ``shed_factor`` defaults to the
  gateway router's (:class:`~fleetpilot.core.routing.RoutingParams`, 3: it still serves a
  request predicted up to 3× late), which is what makes fluid and request-level runs of
  the same policy agree; 1 sheds everything that would miss the target.

A request's TTFT is the base TTFT of the replica it lands on (1.5 steps + its prefill at the
SLO operating point, weighted by capacity) plus its wait; the p99 is the 99th percentile of
that mixture over the window's substeps.  A plan that sheds ``batch`` drops the
``batch_share`` of arrivals at the gateway.  SLO attainment is the share of arriving requests
whose first token comes within the TTFT target (shed requests miss).  A backlog left at the
end of the series is counted as served.  Why this approximation: it is exact in the two limits
that matter to cost and p99 — a comfortably sized fleet (Erlang-C ≈ 0) and an overloaded one
(fluid backlog, then shedding) — and costs a few scalar operations per substep.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy import special

from fleetpilot.core.capacity import Plan, PlanParams, replica_capacity_table, slo_table
from fleetpilot.core.model import (
    CapacityClass,
    Demand,
    Pool,
    Replica,
    ReplicaState,
    ServiceClass,
    Snapshot,
)
from fleetpilot.core.policies import CapacityPolicy
from fleetpilot.core.routing import DEFAULT_PARAMS

__all__ = [
    "NO_LIMIT",
    "FluidResult",
    "WindowSeries",
    "capacity_table",
    "simulate",
    "spread_counts",
    "upper_bounds",
    "zone_bounds",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

NO_LIMIT = 2**31 - 1
"""Replicas standing for "no limit" in the integer arrays here (a pool without a quota, or a
0/1 spot trace that is up for one): no fleet comes near it, and sums of a few stay in int64."""


class WindowSeries(Protocol):
    """Per-window traffic; :class:`fleetpilot.core.series.RateSeries` is one."""

    @property
    def window_s(self) -> float: ...
    @property
    def rps(self) -> Sequence[float]: ...
    @property
    def mean_prompt_tokens(self) -> Sequence[float]: ...
    @property
    def mean_output_tokens(self) -> Sequence[float]: ...
    @property
    def cv(self) -> Sequence[float]: ...
    @property
    def start_s(self) -> float: ...


def spread_counts(counts: Sequence[int], target: int, available: Sequence[int]) -> list[int]:
    """Pods per zone after the market and the scheduler, from ``counts`` (pods per zone now):
    zone ``k`` keeps at most ``available[k]``; above ``target`` pods go from the fullest zone
    (the lowest index among equals); below it one pod at a time goes to an emptiest zone with
    room, and only there, since a pod anywhere else would leave its zone two above the
    emptiest (maxSkew 1, ``whenUnsatisfiable: DoNotSchedule``)."""
    room = [max(a, 0) for a in available]
    out = [min(n, a) for n, a in zip(counts, room, strict=True)]
    target = max(target, 0)
    while sum(out) > target:
        out[out.index(max(out))] -= 1
    while out and sum(out) < target:
        low = min(out)
        k = next((k for k, n in enumerate(out) if n == low and n < room[k]), None)
        if k is None:
            break
        out[k] += 1
    return out


def zone_bounds(
    pools: Sequence[Pool], spot_zones: Mapping[str, Sequence[Sequence[int]]]
) -> dict[str, list[int]]:
    """The most replicas each zoned pool can hold per window (its quota, if any, placed from
    scratch by :func:`spread_counts`): a whole-pool bound, e.g. for the offline optimum.
    From scratch the spread fills the emptiest zones one pod at a time and stops once the zone
    with the least room is full, so no zone ends more than one above that zone's room."""
    out: dict[str, list[int]] = {}
    for pool in pools:
        zoned = spot_zones.get(pool.name)
        if zoned is None:
            continue
        most = []
        for col in zip(*zoned, strict=True):  # window by window: one count per zone
            room = [max(a, 0) for a in col]
            low = min(room, default=0)
            most.append(pool.offering.within_quota(sum(min(r, low + 1) for r in room)))
        out[pool.name] = most
    return out


def capacity_table(
    series: WindowSeries, pools: Sequence[Pool], params: PlanParams, *, planned: bool = True
) -> FloatArray:
    """Requests/s one replica of each pool carries in each window, shape (windows, pools):
    when ``planned`` what the policies and the optimum size with
    (:func:`~fleetpilot.core.capacity.replica_capacity_table`, the rule they share), else the
    SLO capacity itself at the window's mean lengths (what a ready replica does)."""
    out = np.zeros((len(series.rps), len(pools)))
    for j, pool in enumerate(pools):
        if pool.profile is None:
            raise ValueError(f"pool {pool.name!r} has no profile: its capacity is unknown")
        if planned:
            out[:, j] = replica_capacity_table(
                pool, params, series.mean_prompt_tokens, series.mean_output_tokens
            )
        else:
            out[:, j] = slo_table(
                pool.profile,
                ttft_slo_s=params.ttft_slo_s,
                itl_slo_s=params.itl_slo_s,
                mean_prompt_tokens=series.mean_prompt_tokens,
                mean_output_tokens=series.mean_output_tokens,
            ).requests_per_s
    return out


def upper_bounds(
    pools: Sequence[Pool], windows: int, spot_available: Mapping[str, Sequence[int]] | None
) -> IntArray:
    """Replicas each pool may run per window, shape (windows, pools): its quota
    (:data:`NO_LIMIT` without one), and for a pool with an availability series also that
    series."""
    quotas = [p.offering.within_quota(NO_LIMIT) for p in pools]
    out = np.tile(np.array(quotas, dtype=np.int64), (windows, 1))
    for j, pool in enumerate(pools):
        series = (spot_available or {}).get(pool.name)
        if series is None:
            continue
        avail = np.asarray(series, dtype=np.int64)
        if avail.shape != (windows,):
            raise ValueError(
                f"availability of {pool.name!r} has shape {avail.shape}, not {windows}"
            )
        out[:, j] = np.minimum(out[:, j], np.maximum(avail, 0))
    return out


# ---------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class FluidResult:
    """Per-window arrays (index = window) and totals of one fluid run."""

    pool_names: tuple[str, ...]
    capacity_classes: tuple[CapacityClass, ...]
    window_s: float
    ttft_slo_s: float
    demand_rps: FloatArray
    capacity_rps: FloatArray  # time-averaged SLO capacity of ready replicas
    served_rps: FloatArray
    shed_rps: FloatArray
    backlog: FloatArray  # requests queued at the window's end
    ttft_mean_s: FloatArray  # of requests served (NaN in a window without any)
    ttft_p99_s: FloatArray
    attainment: FloatArray  # share of arrivals with TTFT within target (NaN without arrivals)
    tokens: FloatArray  # prompt + output tokens served
    cost: FloatArray  # $ per window
    cost_by_class: dict[str, FloatArray]
    replica_hours_by_class: dict[str, FloatArray]  # paid (starting + ready) replica-hours
    targets: IntArray  # (windows, pools) after the window's plan
    ready: FloatArray  # (windows, pools) time-averaged ready replicas
    preemptions: IntArray
    notes: tuple[str, ...] = field(default=(), repr=False)  # the plan note at each call

    @property
    def total_cost(self) -> float:
        return float(self.cost.sum())

    @property
    def requests(self) -> float:
        return float(self.demand_rps.sum() * self.window_s)

    @property
    def served(self) -> float:
        return float(self.served_rps.sum() * self.window_s)

    @property
    def shed(self) -> float:
        return float(self.shed_rps.sum() * self.window_s)

    @property
    def slo_attainment(self) -> float:
        """Share of all requests whose first token came within the TTFT target."""
        arrivals = self.demand_rps * self.window_s
        total = float(arrivals.sum())
        if total <= 0:
            return 1.0
        return float(np.nansum(self.attainment * arrivals) / total)

    @property
    def cost_per_million_tokens(self) -> float:
        """$ per million tokens served (prompt + output)."""
        tokens = float(self.tokens.sum())
        return self.total_cost / tokens * 1e6 if tokens > 0 else math.inf

    def totals(self) -> dict[str, Any]:
        return {
            "cost": self.total_cost,
            "cost_per_million_tokens": self.cost_per_million_tokens,
            "cost_by_class": {k: float(v.sum()) for k, v in self.cost_by_class.items()},
            "replica_hours_by_class": {
                k: float(v.sum()) for k, v in self.replica_hours_by_class.items()
            },
            "requests": self.requests,
            "served": self.served,
            "shed": self.shed,
            "slo_attainment": self.slo_attainment,
            "worst_window_p99_ttft_s": float(np.nanmax(self.ttft_p99_s))
            if np.any(np.isfinite(self.ttft_p99_s))
            else math.nan,
            "preemptions": int(self.preemptions.sum()),
        }


# ---------------------------------------------------------------------------------------------
# The fleet


@dataclass(slots=True)
class _Fleet:
    """One pool's replicas: ready ones (numbers, oldest first) and starting ones (ready time,
    number), plus views for snapshots."""

    pool: Pool
    target: int = 0
    ready: list[int] = field(default_factory=list)
    starting: list[tuple[float, int]] = field(default_factory=list)
    views: dict[int, Replica] = field(default_factory=dict)
    made: int = 0
    preempt_at: tuple[float, ...] = ()
    next_preempt: int = 0

    @property
    def alive(self) -> int:
        return len(self.ready) + len(self.starting)

    def with_target(self) -> Pool:
        p = self.pool
        if p.target != self.target:
            p = Pool(p.name, p.model, p.offering, self.target, p.profile)
        return p

    def _view(self, number: int, state: ReplicaState) -> Replica:
        pool = self.pool
        assert pool.profile is not None
        view = Replica(
            f"{pool.name}/{number}", pool.name, pool.model, f"fluid://{pool.name}/{number}",
            pool.offering, pool.profile, state,
        )  # fmt: skip
        self.views[number] = view
        return view

    def launch(self, at: float, ready_now: bool = False) -> None:
        number = self.made
        self.made += 1
        if ready_now:
            self.ready.append(number)
            self._view(number, ReplicaState.READY)
        else:
            bisect.insort(self.starting, (at + self.pool.offering.startup_s, number))
            self._view(number, ReplicaState.STARTING)

    def become_ready(self) -> float:
        at, number = self.starting.pop(0)
        self.ready.append(number)
        self._view(number, ReplicaState.READY)
        return at

    def reconcile(self, at: float, allowed: int, ready_now: bool) -> None:
        """Keep the pool at its target: drop extras, launch what is missing and allowed."""
        while self.alive > self.target:
            self.remove_one(prefer_ready=False)
        for _ in range(min(self.target, allowed) - self.alive):
            self.launch(at, ready_now)

    def run(self, t0: float, t1: float, allowed: int) -> tuple[list[tuple[float, int, int]], int]:
        """Replicas becoming ready and pre-emptions (each replaced at once, within ``allowed``)
        during [t0, t1): the changes as (seconds into the window, Δready, Δalive), and how
        many replicas were pre-empted."""
        changes: list[tuple[float, int, int]] = []
        lost = 0
        times = self.preempt_at
        while self.next_preempt < len(times) and times[self.next_preempt] < t0:
            self.next_preempt += 1  # before this window, with nothing left to take
        while True:
            ready_at = self.starting[0][0] if self.starting else math.inf
            preempt = times[self.next_preempt] if self.next_preempt < len(times) else math.inf
            if min(ready_at, preempt) >= t1:
                return changes, lost
            if ready_at <= preempt:
                changes.append((max(self.become_ready(), t0) - t0, 1, 0))
                continue
            self.next_preempt += 1
            had_ready = bool(self.ready)
            if not self.remove_one(prefer_ready=True):
                continue
            lost += 1
            changes.append((preempt - t0, -1 if had_ready else 0, -1))
            if self.alive < min(self.target, allowed):
                self.launch(preempt)
                changes.append((preempt - t0, 0, 1))

    def remove_one(self, prefer_ready: bool) -> bool:
        """Drop one replica: for a scale-down the newest starting one, else the newest ready;
        for a pre-emption the oldest ready one, else the newest starting one."""
        if prefer_ready and self.ready:
            number = self.ready.pop(0)
        elif self.starting:
            number = self.starting.pop()[1]
        elif self.ready:
            number = self.ready.pop()
        else:
            return False
        del self.views[number]
        return True


# ---------------------------------------------------------------------------------------------
# Queue arithmetic


def _erlang_c(c: FloatArray, a: FloatArray) -> FloatArray:
    """Probability of waiting in M/M/c with ``c`` servers (any positive real) and offered
    load ``a < c``: Erlang B from the Poisson pmf and cdf (gamma functions), then C."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        safe_a = np.maximum(a, 1e-300)
        log_pmf = c * np.log(safe_a) - safe_a - special.gammaln(c + 1.0)
        b = np.exp(log_pmf) / special.gammaincc(c + 1.0, safe_a)
        b = np.where(np.isfinite(b), np.clip(b, 0.0, 1.0), 1.0)
        out = c * b / (c - a * (1.0 - b))
    return np.where((a > 0) & (c > 0), np.clip(out, 0.0, 1.0), 0.0)


@dataclass(frozen=True, slots=True)
class _Waits:
    """How long admitted requests wait, per (window, substep).

    Saturated substeps (a backlog, or arrivals at or above capacity): uniform on [lo, hi].
    Otherwise M/G/c: no wait with probability 1 - p, else exponential with rate ``theta``;
    requests that would wait beyond ``horizon`` are shed, so what is served is that
    distribution truncated at ``horizon``.
    """

    saturated: npt.NDArray[np.bool_]
    lo: FloatArray
    hi: FloatArray
    p: FloatArray
    theta: FloatArray
    horizon: FloatArray

    def late(self) -> FloatArray:
        """Share of admitted requests shed for waiting past the horizon."""
        return np.where(self.saturated, 0.0, self._exp_above(self.horizon))

    def _exp_above(self, x: FloatArray) -> FloatArray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.where(x < 0, 1.0, self.p * np.exp(-self.theta * np.maximum(x, 0.0)))

    def within(self, x: FloatArray) -> FloatArray:
        """Share of admitted requests served with a wait of at most ``x``."""
        x = np.minimum(x, self.horizon)
        width = self.hi - self.lo
        with np.errstate(divide="ignore", invalid="ignore"):
            uniform = np.where(
                width > 0, np.clip((x - self.lo) / np.where(width > 0, width, 1.0), 0, 1), 1.0
            )
        uniform = np.where(x >= self.lo, uniform, 0.0)
        expo = np.where(x >= 0, 1.0 - self._exp_above(x), 0.0)
        return np.where(self.saturated, uniform, expo)

    def mean(self) -> FloatArray:
        """Mean wait of the requests served."""
        h = np.maximum(self.horizon, 0.0)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            e = np.exp(-self.theta * h)
            part = self.p / self.theta * (1.0 - e * (1.0 + self.theta * h))
            expo = np.where(self.p > 0, part / np.maximum(1.0 - self.p * e, 1e-300), 0.0)
        return np.where(self.saturated, 0.5 * (self.lo + self.hi), expo)

    def p99(self, weight: FloatArray, base: FloatArray) -> FloatArray:
        """Per window (row), the 99th percentile of base + wait over its substeps, weighted."""
        total = weight.sum(axis=1)
        served = np.maximum(1.0 - self.late(), 1e-300)
        top = np.max(base + np.maximum(np.where(self.saturated, self.hi, self.horizon), 0), 1)
        lo_t = np.zeros_like(total)
        hi_t = top + 1e-9
        for _ in range(50):
            mid = 0.5 * (lo_t + hi_t)
            x = mid[:, None] - base
            above = weight * (1.0 - self.within(x) / served)
            over = above.sum(axis=1) > 0.01 * total
            lo_t = np.where(over, mid, lo_t)
            hi_t = np.where(over, hi_t, mid)
        return np.where(total > 0, hi_t, np.nan)


def _serve(
    backlog: float, lam: float, cap: FloatArray, base: FloatArray, shed_after: float, dt: float,
    admitted: FloatArray, lo: FloatArray, hi: FloatArray, saturated: npt.NDArray[np.bool_],
) -> tuple[float, float, float]:  # fmt: skip
    """One window of the fluid queue, substep by substep (arrival rate ``lam``, capacity
    ``cap[k]``).  Fills, per substep, the requests admitted and, where the fleet is saturated,
    the range of their waits; returns the backlog left, and the requests served and shed."""
    served = shed = 0.0
    for k in range(len(cap)):
        c = float(cap[k])
        limit = c * max(0.0, shed_after - float(base[k]))
        old = max(backlog - limit, 0.0)  # capacity fell: queued work that cannot start in time
        start = backlog - old
        backlog = start + (lam - c) * dt
        new = 0.0
        if backlog > limit:
            new = backlog - limit
            backlog = limit
        elif backlog < 0:
            backlog = 0.0
        shed += old + new
        admitted[k] = max(lam * dt - new, 0.0)
        served += start + lam * dt - new - backlog
        if start > 0 or backlog > 0 or lam >= c:
            saturated[k] = True
            if c > 0:
                lo[k] = min(start, backlog) / c
                hi[k] = max(start, backlog) / c
    return backlog, served, shed


# ---------------------------------------------------------------------------------------------
# The run


def simulate(
    series: WindowSeries,
    pools: Sequence[Pool],
    policy: CapacityPolicy,
    params: PlanParams | None = None,
    *,
    control_every: int = 1,
    spot_available: Mapping[str, Sequence[int]] | None = None,
    spot_zones: Mapping[str, Sequence[Sequence[int]]] | None = None,
    preemptions: Mapping[str, Sequence[float]] | None = None,
    batch_share: float = 0.0,
    service_scv: float = 1.0,
    shed_factor: float = DEFAULT_PARAMS.shed_factor,
    substeps: int = 10,
    warm_start: bool = True,
) -> FluidResult:
    """Run ``series`` through a fleet of ``pools`` driven by ``policy`` (see the module)."""
    params = params or PlanParams()
    windows = len(series.rps)
    if not pools or windows == 0:
        raise ValueError("need pools and at least one window")
    if control_every < 1 or substeps < 1 or shed_factor < 1 or not 0 <= batch_share <= 1:
        raise ValueError("control_every, substeps, shed_factor ≥ 1 and batch_share in [0, 1]")
    models = {p.model for p in pools}
    if len(models) != 1:
        raise ValueError(f"one model per run, got {sorted(models)}")
    model = models.pop()
    rps = np.asarray(series.rps, dtype=np.float64)
    prompt = np.asarray(series.mean_prompt_tokens, dtype=np.float64)
    output = np.asarray(series.mean_output_tokens, dtype=np.float64)
    cv2 = np.asarray(series.cv, dtype=np.float64) ** 2
    params = params.with_extent(float(rps.max()), float(rps.mean()))

    # What a ready replica of each pool does in each window, at the true mean lengths.
    n_pools = len(pools)
    mu = np.zeros((windows, n_pools))  # requests/s at the SLO
    slots = np.zeros((windows, n_pools))  # SLO batch
    base = np.zeros((windows, n_pools))  # TTFT without waiting
    for j, pool in enumerate(pools):
        if pool.profile is None:
            raise ValueError(f"pool {pool.name!r} has no profile")
        t = slo_table(
            pool.profile,
            ttft_slo_s=params.ttft_slo_s,
            itl_slo_s=params.itl_slo_s,
            mean_prompt_tokens=prompt,
            mean_output_tokens=output,
        )
        mu[:, j] = t.requests_per_s
        slots[:, j] = t.batch
        base[:, j] = 1.5 * t.step_s + prompt / pool.profile.prefill_rate
    upper = upper_bounds(pools, windows, spot_available)
    static = upper.copy()  # quota and whole-pool series; zones add a target-dependent cap
    by_zone: dict[int, IntArray] = {}  # pool index → (windows, zones) availability
    for j, pool in enumerate(pools):
        zoned = (spot_zones or {}).get(pool.name)
        if zoned is None:
            continue
        avail = np.asarray(zoned, dtype=np.int64).T
        if avail.shape != (windows, max(pool.offering.zones, 1)):
            raise ValueError(
                f"zone availability of {pool.name!r} has shape {avail.shape[::-1]}, not "
                f"({pool.offering.zones}, {windows})"
            )
        by_zone[j] = avail
    placed = {j: [0] * avail.shape[1] for j, avail in by_zone.items()}  # pods per zone
    fleets = [_Fleet(p) for p in pools]
    for f in fleets:
        f.preempt_at = tuple(sorted((preemptions or {}).get(f.pool.name, ())))
    price = np.array([p.offering.price_per_hour for p in pools])
    classes = tuple(p.offering.capacity_class for p in pools)

    dt_w = float(series.window_s)
    k_sub = substeps
    dt = dt_w / k_sub
    edges = np.arange(1, k_sub + 1) * dt  # substep ends, relative to the window start
    target_s = params.ttft_slo_s
    shed_after = shed_factor * target_s

    # Per-window outputs.
    targets = np.zeros((windows, n_pools), dtype=np.int64)
    ready_avg = np.zeros((windows, n_pools))
    alive_s = np.zeros((windows, n_pools))
    lost = np.zeros(windows, dtype=np.int64)
    served = np.zeros(windows)
    shed = np.zeros(windows)
    backlog_end = np.zeros(windows)
    # Per-substep records for the waiting-time statistics.
    cap_k = np.zeros((windows, k_sub))
    slot_k = np.zeros((windows, k_sub))
    base_k = np.zeros((windows, k_sub))
    base_max_k = np.zeros((windows, k_sub))
    lam_k = np.zeros(windows)
    admitted_k = np.zeros((windows, k_sub))
    lo_k = np.zeros((windows, k_sub))
    hi_k = np.zeros((windows, k_sub))
    sat_k = np.zeros((windows, k_sub), dtype=np.bool_)

    state: Any = None
    shed_classes: tuple[ServiceClass, ...] = ()
    notes: list[str] = []
    backlog = 0.0
    in_flight = 0
    calls = 0
    for w in range(windows):
        t0 = w * dt_w
        t1 = t0 + dt_w
        for j, avail in by_zone.items():  # a zone keeps at most its share of the target
            placed[j] = spread_counts(placed[j], fleets[j].target, avail[w].tolist())
            upper[w, j] = min(static[w, j], sum(placed[j]))
        for j, f in enumerate(fleets):  # the market takes back what it no longer has
            while f.alive > upper[w, j] and f.remove_one(prefer_ready=False):
                lost[w] += 1
        if w % control_every == 0:
            seen = w - 1 if w > 0 else 0
            if w == 0:
                service = np.where(mu[0] > 0, slots[0] / np.maximum(mu[0], 1e-300), 0.0)
                in_flight = round(rps[0] * float(np.mean(service)))
            demand = Demand(
                rps=float(rps[seen]),
                mean_prompt_tokens=float(prompt[seen]),
                mean_output_tokens=float(output[seen]),
                in_flight=in_flight,
                batch_share=batch_share,
            )
            snapshot = Snapshot(
                now=t0,
                replicas=tuple(v for f in fleets for v in f.views.values()),
                replicas_reported=True,
                tick=calls,
                pools=tuple(f.with_target() for f in fleets),
                demand={model: demand},
            )
            plan: Plan
            plan, state = policy(snapshot, state, params)
            calls += 1
            notes.append(plan.note)
            by_name = {f.pool.name: f for f in fleets}
            for name, n in plan.targets.items():
                if name in by_name:
                    by_name[name].target = by_name[name].pool.offering.within_quota(int(n))
            shed_classes = tuple(plan.shed)
            for j, avail in by_zone.items():  # the new target's spread over the zones
                placed[j] = spread_counts(placed[j], fleets[j].target, avail[w].tolist())
                upper[w, j] = min(static[w, j], sum(placed[j]))
        ready_frac = np.zeros((n_pools, k_sub))
        for j, f in enumerate(fleets):
            targets[w, j] = f.target
            f.reconcile(t0, int(upper[w, j]), ready_now=warm_start and w == 0)
            ready0, alive0 = len(f.ready), f.alive
            changes, preempted = f.run(t0, t1, int(upper[w, j]))
            lost[w] += preempted
            ready_frac[j] = ready0
            alive_s[w, j] = alive0 * dt_w
            if changes:
                ch = np.array(changes)
                cover = np.clip(edges[None, :] - ch[:, :1], 0.0, dt) / dt
                ready_frac[j] += (ch[:, 1:2] * cover).sum(axis=0)
                alive_s[w, j] += float((ch[:, 2] * (dt_w - ch[:, 0])).sum())
        ready_avg[w] = ready_frac.mean(axis=1)

        # Service, substep by substep.
        cap = mu[w] @ ready_frac
        cap_k[w] = cap
        slot_k[w] = slots[w] @ ready_frac
        with np.errstate(divide="ignore", invalid="ignore"):
            base_k[w] = np.where(cap > 0, (mu[w] * base[w]) @ ready_frac / cap, 0.0)
        used = ready_frac > 0
        base_max_k[w] = np.max(np.where(used, base[w][:, None], 0.0), axis=0)
        arriving = float(rps[w])
        lam = arriving * (1.0 - batch_share) if ServiceClass.BATCH in shed_classes else arriving
        lam_k[w] = lam
        shed[w] = (arriving - lam) * dt_w
        backlog, served[w], dropped = _serve(
            backlog, lam, cap, base_k[w], shed_after, dt, admitted_k[w], lo_k[w], hi_k[w], sat_k[w]
        )
        shed[w] += dropped
        backlog_end[w] = backlog
        c_last = float(cap[-1])
        service_s = float(slot_k[w, -1]) / c_last if c_last > 0 else 0.0
        in_flight = round(min(lam, c_last) * service_s + backlog)
    served[-1] += backlog  # what is still queued at the end is served after it

    # Waiting-time statistics, all windows at once.
    lam2 = np.broadcast_to(lam_k[:, None], cap_k.shape)
    spread = np.broadcast_to((cv2[:, None] + service_scv) / 2.0, cap_k.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        offered = np.where(cap_k > 0, lam2 * slot_k / cap_k, 0.0)
        theta = np.where(sat_k, 1.0, np.minimum((cap_k - lam2) / np.maximum(spread, 1e-12), 1e12))
    waits = _Waits(
        saturated=sat_k,
        lo=lo_k,
        hi=hi_k,
        p=np.where(sat_k, 0.0, _erlang_c(slot_k, offered)),
        theta=theta,
        horizon=shed_factor * target_s - base_k,
    )
    late = admitted_k * waits.late()
    shed += late.sum(axis=1)
    served -= late.sum(axis=1)
    kept = admitted_k - late
    attained = admitted_k * waits.within(target_s - base_k)
    arrivals = rps * dt_w
    with np.errstate(divide="ignore", invalid="ignore"):
        attainment = np.where(arrivals > 0, attained.sum(axis=1) / arrivals, np.nan)
        ttft_mean = np.where(
            kept.sum(axis=1) > 0,
            (kept * (base_k + waits.mean())).sum(axis=1) / kept.sum(axis=1),
            np.nan,
        )
    ttft_p99 = waits.p99(kept, base_max_k)

    hours = alive_s / 3600.0
    cost_pool = hours * price[None, :]
    cost_by_class = {c.value: np.zeros(windows) for c in CapacityClass}
    hours_by_class = {c.value: np.zeros(windows) for c in CapacityClass}
    for j, cls in enumerate(classes):
        cost_by_class[cls.value] += cost_pool[:, j]
        hours_by_class[cls.value] += hours[:, j]
    return FluidResult(
        pool_names=tuple(p.name for p in pools),
        capacity_classes=classes,
        window_s=dt_w,
        ttft_slo_s=target_s,
        demand_rps=rps,
        capacity_rps=cap_k.mean(axis=1),
        served_rps=served / dt_w,
        shed_rps=shed / dt_w,
        backlog=backlog_end,
        ttft_mean_s=ttft_mean,
        ttft_p99_s=ttft_p99,
        attainment=attainment,
        tokens=served * (prompt + output),
        cost=cost_pool.sum(axis=1),
        cost_by_class=cost_by_class,
        replica_hours_by_class=hours_by_class,
        targets=targets,
        ready=ready_avg,
        preemptions=lost,
        notes=tuple(notes),
    )
