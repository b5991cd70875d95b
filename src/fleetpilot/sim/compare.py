"""Run capacity policies side by side on one workload, in either simulator, plus the optimum.

This is what ``fleetpilot simulate`` prints (with no ``--policy``, or several): every policy of
:data:`~fleetpilot.core.policies.CAPACITY_POLICIES` (and ``adaptive`` when the planner is
installed) on the same trace, the same fleet and the same spot pre-emptions, with the
offline optimum — the cheapest schedule that carries every window with perfect knowledge —
as the yardstick each policy's cost is divided by.

Two modes, one vocabulary:

* ``request`` replays every request through the routers and batching engines
  (:mod:`fleetpilot.sim.request_level`); the optimum there is the optimum *schedule*
  replayed with enough lead for start-up, so its latency is measured too;
* ``window`` runs per-window fluid traffic (:mod:`fleetpilot.sim.fluid`) for weeks of data.

:func:`agreement` runs both modes on the same short trace and reports how far apart they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fleetpilot.core.capacity import PlanParams
from fleetpilot.core.model import CapacityClass, Demand, Pool, Snapshot
from fleetpilot.core.policies import CAPACITY_POLICIES, CapacityPolicy, schedule
from fleetpilot.core.series import RateSeries, repeat_each, windows_of
from fleetpilot.core.workload import TraceRequest
from fleetpilot.sim.fluid import simulate as simulate_fluid
from fleetpilot.sim.fluid import zone_bounds
from fleetpilot.sim.optimum import OptimumResult, offline_optimum
from fleetpilot.sim.request_level import Preemptions
from fleetpilot.sim.request_level import simulate as simulate_requests

__all__ = [
    "PolicyRun",
    "agreement",
    "all_policies",
    "compare_requests",
    "compare_windows",
    "control_steps",
    "warm_start",
]

Mode = Literal["request", "window"]
OPTIMUM = "optimum"


def all_policies() -> dict[str, CapacityPolicy]:
    """Policies by name: the baselines and the adaptive planner."""
    return dict(CAPACITY_POLICIES)


@dataclass(frozen=True)
class PolicyRun:
    """One policy's outcome, in the same keys whichever simulator ran it."""

    policy: str
    mode: Mode
    summary: dict[str, Any]
    timeline: list[dict[str, Any]]

    def row(self, optimum_cost: float | None, hedged_cost: float | None = None) -> dict[str, Any]:
        s = dict(self.summary)
        s["policy"] = self.policy
        for key, bound in (("vs_optimum", optimum_cost), ("vs_hedged", hedged_cost)):
            s[key] = s["cost"] / bound if bound and s.get("cost") is not None else None
        return s


def _first_demand(series: RateSeries) -> Demand:
    return Demand(
        rps=series.rps[0] if series.rps else 0.0,
        mean_prompt_tokens=series.mean_prompt_tokens[0] if series.rps else 256.0,
        mean_output_tokens=series.mean_output_tokens[0] if series.rps else 128.0,
    )


def _with_extent(params: PlanParams, series: RateSeries) -> PlanParams:
    """Tell static policies the peak and mean of what they will face (they are sized once)."""
    rps = series.rps or (0.0,)
    return params.with_extent(max(rps), sum(rps) / len(rps))


def warm_start(
    policy: CapacityPolicy, pools: Sequence[Pool], series: RateSeries, params: PlanParams
) -> dict[str, int]:
    """The policy's first plan, ready at t=0, as a fleet that has been running would be."""
    model = pools[0].model
    snap = Snapshot(now=0.0, replicas=(), pools=tuple(pools), demand={model: _first_demand(series)})
    plan, _ = policy(snap, None, params)
    return {name: n for name, n in plan.targets.items() if n > 0}


def _optimum_schedule(
    series: RateSeries, pools: Sequence[Pool], params: PlanParams
) -> tuple[OptimumResult, CapacityPolicy]:
    best = offline_optimum(series, pools, params)
    lead = max((p.offering.startup_s for p in pools), default=0.0)
    return best, schedule(best.plans(), series.window_s, start_s=series.start_s, lead_s=lead)


def compare_requests(
    trace: Sequence[TraceRequest],
    pools: Sequence[Pool],
    policies: Sequence[str],
    params: PlanParams,
    *,
    window_s: float = 600.0,
    control_interval_s: float = 60.0,
    preemptions: Preemptions = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    replay_optimum: bool = True,
) -> tuple[list[PolicyRun], float]:
    """Every policy through the request-level simulator; returns the runs and the optimum's
    cost (the bound), with the optimum schedule itself replayed as the run ``optimum`` unless
    ``replay_optimum`` is False."""
    series = windows_of(trace, window_s)
    params = _with_extent(params, series)
    table = all_policies()
    best, best_policy = _optimum_schedule(series, pools, params)
    runs: list[PolicyRun] = []
    for name in [*policies, OPTIMUM] if replay_optimum else policies:
        if progress:
            progress(name)
        policy = best_policy if name == OPTIMUM else _lookup(table, name)
        res = simulate_requests(
            trace,
            pools,
            capacity_policy=policy,
            params=params,
            control_interval_s=control_interval_s,
            initial=warm_start(policy, pools, series, params),
            preemptions=preemptions,
            seed=seed,
            window_s=window_s,
        )
        s = res.summary()
        summary = {k: s.get(k) for k in _KEYS}
        runs.append(PolicyRun(name, "request", summary, res.timeline.rows()))
    return runs, best.total_cost


_KEYS = (
    "requests", "ok", "shed", "lost", "continued", "preemptions", "cost",
    "cost_per_million_tokens", "cost_by_class", "replica_hours_by_class", "slo_attainment",
    "ttft_p50", "ttft_p95", "ttft_p99", "e2e_p50", "e2e_p95", "e2e_p99",
)  # fmt: skip


def _lookup(table: Mapping[str, CapacityPolicy], name: str) -> CapacityPolicy:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown capacity policy {name!r}; known: {sorted(table)}") from None


def compare_windows(
    series: RateSeries,
    pools: Sequence[Pool],
    policies: Sequence[str],
    params: PlanParams,
    *,
    preemptions: Mapping[str, Sequence[float]] | None = None,
    spot_available: Mapping[str, Sequence[int]] | None = None,
    spot_zones: Mapping[str, Sequence[Sequence[int]]] | None = None,
    progress: Callable[[str], None] | None = None,
    control_s: float | None = None,
) -> tuple[list[PolicyRun], float]:
    """Every policy through the window-level (fluid) simulator, and the optimum (which sees a
    zoned pool's availability as the most its zones can hold, :func:`~.fluid.zone_bounds`).

    ``control_s`` (default: the series' window) steps the policies that often: each window is
    cut into ``window_s / control_s`` equal windows (:meth:`RateSeries.refined`; it must
    divide the window), as a controller that observes every ``control_s`` sees the series.
    The optimum is the same at either cadence (its windows only repeat), so it is solved on
    the series as given."""
    params = _with_extent(params, series)
    k = 1 if control_s is None else control_steps(series.window_s, control_s)
    table = all_policies()
    bound = dict(spot_available or {})
    for name, most in zone_bounds(pools, spot_zones or {}).items():
        whole = bound.get(name)
        if whole is not None:
            most = [min(a, b) for a, b in zip(whole, most, strict=True)]
        bound[name] = most
    best = offline_optimum(series, pools, params, spot_available=bound or None)
    lead = max((p.offering.startup_s for p in pools), default=0.0)
    window_s, start_s = series.window_s, series.start_s
    if k > 1:
        series = series.refined(k)
        if spot_available is not None:
            spot_available = {n: repeat_each(xs, k) for n, xs in spot_available.items()}
        spot_zones = {n: [repeat_each(z, k) for z in zs] for n, zs in (spot_zones or {}).items()}
    runs: list[PolicyRun] = []
    for name in [*policies, OPTIMUM]:
        if progress:
            progress(name)
        if name == OPTIMUM:
            policy = schedule(best.plans(), window_s, start_s=start_s, lead_s=lead)
        else:
            policy = _lookup(table, name)
        res = simulate_fluid(
            series, pools, policy, params, preemptions=preemptions,
            spot_available=spot_available, spot_zones=spot_zones or None,
        )  # fmt: skip
        runs.append(PolicyRun(name, "window", _fluid_summary(res), _fluid_timeline(res)))
    return runs, best.total_cost


def control_steps(window_s: float, control_s: float) -> int:
    """How many control steps one window holds; they must fit it a whole number of times
    (a ValueError says so otherwise)."""
    if not (math.isfinite(control_s) and control_s > 0):
        raise ValueError(f"control_s must be positive, not {control_s}")
    k = max(round(window_s / control_s), 1)
    if abs(k * control_s - window_s) > 1e-6 * window_s:
        raise ValueError(f"control_s {control_s:g} must divide the window ({window_s:g} s)")
    return k


def _fluid_summary(res: Any) -> dict[str, Any]:
    t = res.totals()
    hours = {k: float(v.sum()) for k, v in res.replica_hours_by_class.items()}
    p99 = [x for x in res.ttft_p99_s.tolist() if not math.isnan(x)]
    return {
        "requests": float(res.requests),
        "ok": float(res.served),
        "shed": float(res.shed),
        "lost": 0,
        "continued": None,
        "preemptions": int(res.preemptions.sum()),
        "cost": float(res.total_cost),
        "cost_per_million_tokens": t.get("cost_per_million_tokens"),
        "cost_by_class": {k: float(v.sum()) for k, v in res.cost_by_class.items()},
        "replica_hours_by_class": hours,
        "slo_attainment": float(res.slo_attainment),
        "ttft_p50": None,
        "ttft_p95": None,
        "ttft_p99": max(p99) if p99 else None,  # worst window's p99
        "e2e_p50": None,
        "e2e_p95": None,
        "e2e_p99": None,
    }


def _fluid_timeline(res: Any) -> list[dict[str, Any]]:
    rows = []
    classes = [c.value for c in CapacityClass]
    for w in range(len(res.demand_rps)):
        ready = {c: 0.0 for c in classes}
        for j, cls in enumerate(res.capacity_classes):
            ready[cls.value] += float(res.ready[w, j])
        rows.append(
            {
                "start": w * res.window_s,
                "arrivals": float(res.demand_rps[w] * res.window_s),
                **{f"ready_{c}": v for c, v in ready.items()},
                "cost_per_hour": float(res.cost[w] / (res.window_s / 3600.0)),
                "p99_ttft": None if math.isnan(res.ttft_p99_s[w]) else float(res.ttft_p99_s[w]),
                "preemptions": int(res.preemptions[w]),
            }
        )
    return rows


def agreement(
    trace: Sequence[TraceRequest],
    pools: Sequence[Pool],
    policies: Sequence[str],
    params: PlanParams,
    *,
    window_s: float = 600.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Both simulators on the same trace: per policy, cost and SLO attainment side by side
    and the window mode's relative cost error and attainment difference."""
    req, _ = compare_requests(trace, pools, policies, params, window_s=window_s, seed=seed)
    win, _ = compare_windows(windows_of(trace, window_s), pools, policies, params)
    out = []
    for r, w in zip(req, win, strict=True):
        rc, wc = r.summary["cost"], w.summary["cost"]
        ra, wa = r.summary["slo_attainment"], w.summary["slo_attainment"]
        out.append(
            {
                "policy": r.policy,
                "request_cost": rc,
                "window_cost": wc,
                "cost_error": (wc - rc) / rc if rc else None,
                "request_attainment": ra,
                "window_attainment": wa,
                "attainment_diff": (wa - ra) if ra is not None and wa is not None else None,
            }
        )
    return out
