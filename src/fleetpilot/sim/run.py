"""``fleetpilot simulate``: pick the inputs, run the comparison, write the report.

Inputs resolve as the CLI promises: no trace means the synthetic default (a compressed day
with bursts); a request log runs request by request, a rate series (ServeGen, per-minute
counts) window by window.  Spot markets come from spot maps (``--spot``, several may be
given: :func:`~fleetpilot.traces.spot.load_spot_map` says which trace describes which
accelerator and zone, :mod:`fleetpilot.sim.spot` plays them); a spot pool no map describes
keeps its catalogue interruption rate at request level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.capacity import PlanParams
from fleetpilot.core.model import CapacityClass
from fleetpilot.core.series import RateSeries, scale_trace, windows_of
from fleetpilot.core.workload import synthetic_trace
from fleetpilot.errors import ConfigError
from fleetpilot.sim.compare import (
    PolicyRun,
    agreement,
    all_policies,
    compare_requests,
    compare_windows,
    control_steps,
)
from fleetpilot.sim.fluid import zone_bounds
from fleetpilot.sim.optimum import hedged_optimum
from fleetpilot.sim.request_level import Preemptions
from fleetpilot.sim.spot import request_preemptions, window_spot

__all__ = ["SimOptions", "run_simulation"]

NOTICE_S = 120.0


@dataclass(frozen=True)
class SimOptions:
    trace: str | None = None
    synthetic_hours: float = 4.0
    catalogue: Path | None = None
    model: str = "llama-3.1-8b"
    accelerators: tuple[str, ...] = ()
    classes: tuple[CapacityClass, ...] = (CapacityClass.ON_DEMAND, CapacityClass.SPOT)
    policies: tuple[str, ...] = ()  # empty = all
    mode: str = "auto"  # auto | request | window
    spot: tuple[Path, ...] = ()  # spot maps (YAML); merged
    ttft_slo_s: float = 2.0
    itl_slo_s: float = 0.2
    time_scale: float = 1.0
    rate_scale: float = 1.0
    window_s: float = 600.0
    control_s: float | None = None  # window level: step the policies this often (default: a window)
    limit: int | None = None
    start_s: float = 0.0
    end_s: float = float("inf")
    seed: int = 0
    out: Path = Path("fleetpilot-out")
    check_agreement: bool = False
    knobs: dict[str, float] = field(default_factory=dict)  # PlanParams.with_knobs


@dataclass
class SimOutcome:
    runs: list[PolicyRun]
    optimum_cost: float
    hedged_cost: float  # perfect knowledge that keeps the spot-loss hedge (hedged_optimum)
    title: str
    report: Path
    agreement: list[dict[str, Any]]


def _trace(opts: SimOptions) -> Any:
    if opts.trace is None:
        # a compressed day: by default 4 h at 4 req/s mean, diurnal with bursts (~58k requests)
        return synthetic_trace(opts.synthetic_hours * 3600.0, 4.0, seed=opts.seed)
    from fleetpilot.traces import load_trace

    return load_trace(opts.trace, limit=opts.limit, start_s=opts.start_s, end_s=opts.end_s)


def run_simulation(opts: SimOptions, progress: Callable[[str], None] | None = None) -> SimOutcome:
    catalogue = load_catalogue(opts.catalogue)
    pools = catalogue.pools(opts.model, list(opts.accelerators) or None, opts.classes)
    if not pools:
        raise ConfigError("no pools: check --accelerators / --classes against the catalogue")
    known = all_policies()
    policies = list(opts.policies) or list(known)
    for name in policies:
        if name not in known:
            raise ConfigError(f"unknown policy {name!r}; known: {sorted(known)}")
    params = PlanParams(ttft_slo_s=opts.ttft_slo_s, itl_slo_s=opts.itl_slo_s).with_knobs(opts.knobs)
    workload = _trace(opts)
    market = None
    for path in opts.spot:
        from fleetpilot.traces import load_spot_map

        one = load_spot_map(path)
        market = one if market is None else market.merged(one)
    name = opts.trace or "synthetic day (default)"
    notes: list[str] = []

    if isinstance(workload, RateSeries):
        series = workload.scaled(rate=opts.rate_scale, time=opts.time_scale)
        mode = "window"
    else:
        trace = workload
        if opts.time_scale != 1.0 or opts.rate_scale != 1.0:
            trace = scale_trace(trace, time=opts.time_scale, rate=opts.rate_scale, seed=opts.seed)
        mode = "request" if opts.mode in ("auto", "request") else "window"
        series = windows_of(trace, opts.window_s)

    available: dict[str, list[int]] | None = None  # window level with --spot only
    zones: dict[str, list[list[int]]] | None = None
    if mode == "request":
        if market is not None:
            span = max((r.arrival for r in trace), default=0.0)
            pre: Preemptions
            pre, said = request_preemptions(market, pools, span, notice_s=NOTICE_S)
            notes.append("Spot pre-emptions: " + "; ".join(said) + ".")
        else:
            pre = "rate"
            notes.append("Spot pre-emptions: each spot replica at its catalogue interruption rate.")
        runs, optimum = compare_requests(
            trace, pools, policies, params, window_s=opts.window_s, preemptions=pre,
            seed=opts.seed, progress=progress,
        )  # fmt: skip
    else:
        pre_w = None
        if market is not None:
            played = window_spot(market, pools, series.window_s, len(series.rps))
            available, zones = played.available, played.zones
            notes.append("Spot availability per window: " + "; ".join(played.notes) + ".")
        else:
            notes.append("Window mode without --spot: no spot pre-emptions are played.")
        if opts.control_s is not None:
            try:
                control_steps(series.window_s, opts.control_s)
            except ValueError as exc:
                raise ConfigError(f"--control-s: {exc}") from None
        runs, optimum = compare_windows(
            series, pools, policies, params, preemptions=pre_w, spot_available=available,
            spot_zones=zones or None, progress=progress, control_s=opts.control_s,
        )  # fmt: skip
    notes.insert(
        0,
        f"Trace: {name}; mode: {mode} level; model {opts.model}; pools: "
        f"{', '.join(p.name for p in pools)}; TTFT target {opts.ttft_slo_s:g} s; "
        f"windows {series.window_s:g} s"
        + (
            f", policies stepped every {opts.control_s:g} s."
            if opts.control_s and mode == "window"
            else "."
        ),
    )
    if progress:
        progress("optimum with the spot-loss hedge")
    bounds: dict[str, list[int]] = dict(available or {})
    if mode == "window" and zones:
        bounds.update(zone_bounds(pools, zones))
    hedged = hedged_optimum(series, pools, params, spot_available=bounds or None).total_cost
    agree: list[dict[str, Any]] = []
    if opts.check_agreement and mode == "request":
        if progress:
            progress("agreement")
        agree = agreement(trace, pools, policies, params, window_s=opts.window_s, seed=opts.seed)
    title = f"fleetpilot simulate — {name}"
    from fleetpilot.sim.report import write_report

    report = write_report(
        runs, optimum, opts.out, title=title, ttft_slo_s=opts.ttft_slo_s, notes=notes,
        agreement=agree, hedged_cost=hedged,
    )  # fmt: skip
    return SimOutcome(runs, optimum, hedged, title, report, agree)


def policy_names(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.strip() for v in values if v.strip())
