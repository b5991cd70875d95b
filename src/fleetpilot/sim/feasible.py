"""Yardsticks that hold the SLO: found by replaying candidates request by request.

The offline optimum (:mod:`fleetpilot.sim.optimum`) sizes each window for its mean rate.  On
bursty traffic its replay misses most requests, so a policy's cost over it says nothing.
These yardsticks are searched for in the request-level simulator instead, so that what they
cost is what it takes to *hold* the SLO:

* :func:`feasible_schedule`: perfect knowledge, per window, with or without the spot-loss
  hedge (:func:`~fleetpilot.sim.optimum.offline_optimum` /
  :func:`~fleetpilot.sim.optimum.hedged_optimum` on the window demand × a per-window factor):
  every window whose replay keeps fewer than ``target`` of its requests in time gets a larger
  factor, round after round, until the whole trace holds ``target``.  It is a search, not a
  proof: the schedule found is an upper estimate of the cheapest feasible one;
* :func:`static_feasible`: the smallest static on-demand fleet that holds ``target`` over the
  whole trace (bisection on the rate it is sized for), what a careful team provisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import numpy as np

from fleetpilot.core.capacity import PlanParams
from fleetpilot.core.model import Pool
from fleetpilot.core.policies import schedule, static_peak
from fleetpilot.core.series import RateSeries, windows_of
from fleetpilot.core.workload import TraceRequest
from fleetpilot.sim.compare import warm_start
from fleetpilot.sim.fluid import FluidResult, zone_bounds
from fleetpilot.sim.fluid import simulate as simulate_fluid
from fleetpilot.sim.optimum import hedged_optimum, offline_optimum
from fleetpilot.sim.request_level import STATUSES, Preemptions, SimResult
from fleetpilot.sim.request_level import simulate as simulate_requests

__all__ = [
    "Feasible",
    "WindowFeasible",
    "feasible_schedule",
    "feasible_windows",
    "static_feasible",
    "static_feasible_windows",
    "window_attainment",
]


@dataclass(frozen=True)
class Feasible:
    """A yardstick found by search: its replay, and how it was found."""

    result: SimResult
    cost: float
    attainment: float
    reached: bool  # held ``target`` within the rounds allowed
    rounds: int
    note: str


def window_attainment(result: SimResult, window_s: float, windows: int) -> np.ndarray:
    """Per window, the share of interactive requests that arrived in it and met the TTFT
    target (1 where none arrived)."""
    inter = result.service_class == 0
    met = inter & (result.status == STATUSES.index("ok")) & (result.ttft <= result.ttft_slo_s)
    k = np.minimum((result.arrival / window_s).astype(np.int64), windows - 1)
    n = np.bincount(k[inter], minlength=windows).astype(np.float64)
    ok = np.bincount(k[met], minlength=windows).astype(np.float64)
    return np.divide(ok, n, out=np.ones(windows), where=n > 0)


def _replay(
    trace: Sequence[TraceRequest],
    pools: Sequence[Pool],
    params: PlanParams,
    policy: object,
    initial: dict[str, int],
    preemptions: Preemptions,
    seed: int,
    window_s: float,
) -> SimResult:
    return simulate_requests(
        trace, pools, capacity_policy=policy, params=params,  # type: ignore[arg-type]
        control_interval_s=60.0, initial=initial, preemptions=preemptions, seed=seed,
        window_s=window_s,
    )  # fmt: skip


class _Found(Protocol):
    @property
    def reached(self) -> bool: ...


F = TypeVar("F", bound=_Found)


def _smallest(run: Callable[[float], F], hi: float, peak: float, rounds: int) -> tuple[F, float]:
    """The smallest rate (bisection, ``rounds`` steps, after doubling ``hi`` until it holds)
    for which ``run(rate)`` holds the target, and its run."""
    lo = 0.0
    top = run(hi)
    while not top.reached and hi < 64 * max(peak, 1e-3):
        lo, hi = hi, hi * 2.0
        top = run(hi)
    best, at = top, hi
    for _ in range(rounds):
        mid = (lo + hi) / 2.0
        got = run(mid)
        if got.reached:
            best, at, hi = got, mid, mid
        else:
            lo = mid
    return best, at


def _grow(factor: np.ndarray, per: np.ndarray, target: float, step: float) -> None:
    """Raise the factor of every window whose replay kept fewer than ``target`` of its
    requests in time: the worse it missed, the more (at most 2× a round), in place."""
    short = per < target
    factor[short] *= np.minimum(step / np.maximum(per[short], step / 2.0), 2.0)


def feasible_schedule(
    trace: Sequence[TraceRequest],
    pools: Sequence[Pool],
    params: PlanParams,
    *,
    hedged: bool,
    target: float = 0.99,
    window_s: float = 600.0,
    preemptions: Preemptions = None,
    seed: int = 0,
    max_rounds: int = 10,
    step: float = 1.25,
) -> Feasible:
    """The cheapest perfect-knowledge schedule found whose replay holds ``target`` (module)."""
    series: RateSeries = windows_of(trace, window_s)
    n = len(series.rps)
    factor = np.ones(n)
    lead = max((p.offering.startup_s for p in pools), default=0.0)
    best: Feasible | None = None
    for rounds in range(1, max_rounds + 1):
        scaled = replace(series, rps=tuple(float(r) for r in np.asarray(series.rps) * factor))
        plan = (
            hedged_optimum(scaled, pools, params)
            if hedged
            else offline_optimum(scaled, pools, params)
        )
        plans = plan.plans()
        policy = schedule(plans, window_s, start_s=series.start_s, lead_s=lead)
        first = {name: k for name, k in dict(plans[0]).items() if k > 0}
        res = _replay(trace, pools, params, policy, first, preemptions, seed, window_s)
        got = res.slo_attainment() or 1.0
        best = Feasible(res, res.cost, got, got >= target, rounds, f"{rounds} round(s)")
        if got >= target:
            return best
        _grow(factor, window_attainment(res, window_s, n), target, step)
    assert best is not None
    return replace(best, note=f"did not reach {target:.0%} in {max_rounds} rounds")


def static_feasible(
    trace: Sequence[TraceRequest],
    pools: Sequence[Pool],
    params: PlanParams,
    *,
    target: float = 0.99,
    window_s: float = 600.0,
    preemptions: Preemptions = None,
    seed: int = 0,
    rounds: int = 8,
) -> tuple[Feasible, float]:
    """The smallest static on-demand fleet (``static_peak`` sized for a rate found by
    bisection) whose replay holds ``target``; returns it and the rate it was sized for."""
    series = windows_of(trace, window_s)
    peak = max(series.rps, default=0.0)
    minute = windows_of(trace, 60.0)
    hi = max(max(minute.rps, default=0.0), peak, 1e-3)

    def run(rps: float) -> Feasible:
        p = replace(params, static=replace(params.static, peak_rps=rps))
        first = warm_start(static_peak, pools, series, p)
        res = _replay(trace, pools, p, static_peak, first, preemptions, seed, window_s)
        got = res.slo_attainment() or 1.0
        return Feasible(res, res.cost, got, got >= target, 1, f"sized for {rps:.3g} req/s")

    return _smallest(run, hi, peak, rounds)


# ---------------------------------------------------------------------------------------------
# The same searches at window level (series of weeks, where a request-level replay is too long)


@dataclass(frozen=True)
class WindowFeasible:
    """A window-level yardstick found by search (the fluid simulator's replay)."""

    result: FluidResult
    cost: float
    attainment: float
    reached: bool
    rounds: int
    note: str


def feasible_windows(
    series: RateSeries,
    pools: Sequence[Pool],
    params: PlanParams,
    *,
    hedged: bool,
    target: float = 0.99,
    spot_available: Mapping[str, Sequence[int]] | None = None,
    spot_zones: Mapping[str, Sequence[Sequence[int]]] | None = None,
    max_rounds: int = 10,
    step: float = 1.25,
) -> WindowFeasible:
    """:func:`feasible_schedule` in the window-level simulator: the windows whose replay
    misses ``target`` get a larger factor until the whole series holds it."""
    bound = dict(spot_available or {})
    for name, most in zone_bounds(pools, spot_zones or {}).items():
        whole = bound.get(name)
        bound[name] = [min(a, b) for a, b in zip(whole, most, strict=True)] if whole else most
    n = len(series.rps)
    factor = np.ones(n)
    lead = max((p.offering.startup_s for p in pools), default=0.0)
    best: WindowFeasible | None = None
    for rounds in range(1, max_rounds + 1):
        scaled = replace(series, rps=tuple(float(r) for r in np.asarray(series.rps) * factor))
        solve = hedged_optimum if hedged else offline_optimum
        plans = solve(scaled, pools, params, spot_available=bound or None).plans()
        policy = schedule(plans, series.window_s, start_s=series.start_s, lead_s=lead)
        res = simulate_fluid(
            series, pools, policy, params, spot_available=spot_available, spot_zones=spot_zones
        )
        got = float(res.slo_attainment)
        best = WindowFeasible(
            res, float(res.total_cost), got, got >= target, rounds, f"{rounds} round(s)"
        )
        if got >= target:
            return best
        _grow(factor, np.nan_to_num(np.asarray(res.attainment, np.float64), nan=1.0), target, step)
    assert best is not None
    return replace(best, note=f"did not reach {target:.0%} in {max_rounds} rounds")


def static_feasible_windows(
    series: RateSeries,
    pools: Sequence[Pool],
    params: PlanParams,
    *,
    target: float = 0.99,
    rounds: int = 8,
) -> tuple[WindowFeasible, float]:
    """:func:`static_feasible` in the window-level simulator."""
    peak = max(series.rps, default=0.0)
    hi = max(peak, 1e-3)

    def run(rps: float) -> WindowFeasible:
        p = replace(params, static=replace(params.static, peak_rps=rps))
        res = simulate_fluid(series, pools, static_peak, p)
        got = float(res.slo_attainment)
        return WindowFeasible(
            res, float(res.total_cost), got, got >= target, 1, f"sized for {rps:.3g} req/s"
        )

    return _smallest(run, hi, peak, rounds)
