"""Capacity at the SLO, calibrated: what one replica measurably carries with p99 TTFT in target.

:func:`~fleetpilot.core.capacity.slo_capacity` is analytic: the steady state at which a
replica's *mean* step still meets the targets.  It is a saturation point: arrivals at that rate
queue without bound, and below it the p99 TTFT depends on how many KV slots absorb a burst.
A replica with 128 slots (A100, H100) holds p99 within 2 s up to ~90% of it; one with 16
slots (A10G, L4) misses ~15% of requests at 80% of it already (measured: one replica, Poisson
arrivals, the perf model's :class:`~fleetpilot.core.perf.BatchEngine` in virtual time).
Planning every pool at one ``utilisation`` of the analytic figure therefore over-trusts the
small accelerators, and the mix piles cheap small replicas onto long prompts.

:func:`p99_rate` measures the largest Poisson arrival rate at which one replica keeps its p99
TTFT within the target (request lengths lognormal around the means, a fixed seed, bisection).
It is pure and deterministic, but costs ~0.1-1 s per shape, so the planner does not run it:
``bench/calibrate_capacity.py`` measures a grid per catalogue profile into
:data:`fleetpilot.core.calibration_data.TABLE` (a Python literal: importing it is not I/O),
and :func:`calibrated_ratio` interpolates that grid.  A profile whose numbers differ from the
measured one (a user's catalogue) or another TTFT target gets no calibrated figure.

How policies use it (:func:`planned_rate`, through
:func:`fleetpilot.core.capacity.replica_capacity` and ``PlanParams.calibration``, whose
default is the packaged table): a replica is planned at
``min(slo_capacity × utilisation, calibrated rate)``: never above the load at which it was
measured to miss the p99 target.  Where the analytic figure is already conservative (the large
accelerators) nothing changes.  The offline optimum sizes with the same function, so the
comparison stays fair.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence

from fleetpilot.core.model import Profile
from fleetpilot.core.perf import BatchEngine
from fleetpilot.core.perf import Sequence as EngineSequence

__all__ = ["calibrated_ratio", "p99_rate", "p99_ttft", "planned_rate", "profile_key"]

LENGTH_SIGMA = 0.6  # log-sd of prompt and output lengths around their means
RATIO_FLOOR = 0.05  # the least share of the analytic capacity a replica is planned at


def profile_key(profile: Profile) -> str:
    """What identifies a measured profile: model, accelerator and every number the perf model
    uses, so a changed profile is not matched to a stale measurement."""
    points = ";".join(f"{b}:{t:g}" for b, t in profile.step_points)
    return (
        f"{profile.model}/{profile.accelerator}/x{profile.count}/prefill={profile.prefill_rate:g}"
        f"/max_batch={profile.max_batch}/steps={points}"
    )


def _lognormal(rng: random.Random, mean: float) -> int:
    mu = math.log(max(mean, 1.0)) - LENGTH_SIGMA**2 / 2
    return max(1, round(rng.lognormvariate(mu, LENGTH_SIGMA)))


def p99_ttft(
    profile: Profile,
    rate: float,
    *,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    requests: int = 3000,
    seed: int = 0,
) -> float:
    """p99 TTFT of one replica fed Poisson arrivals at ``rate`` (continuous batching, in
    virtual time; requests arriving during a step join the next one, as the simulator does).
    The same seed gives the same requests at every rate (gaps scale with 1/rate)."""
    rng = random.Random(f"fleetpilot-calibration/{seed}")
    gaps = [rng.expovariate(1.0) for _ in range(requests)]
    prompts = [_lognormal(rng, mean_prompt_tokens) for _ in range(requests)]
    outputs = [_lognormal(rng, mean_output_tokens) for _ in range(requests)]
    arrival: list[float] = []
    t = 0.0
    for g in gaps:
        t += g / rate
        arrival.append(t)
    engine = BatchEngine(profile)
    ttft: list[float] = []
    now, i = 0.0, 0
    while i < requests or engine.busy:
        if not engine.busy:
            now = max(now, arrival[i])
        while i < requests and arrival[i] <= now:
            engine.add(EngineSequence(str(i), prompts[i], outputs[i]))
            i += 1
        step = engine.begin_step()
        now += step.duration
        ttft.extend(now - arrival[int(sid)] for sid in step.admitted)
        engine.end_step()
    ttft.sort()
    return ttft[min(len(ttft) - 1, math.ceil(0.99 * len(ttft)) - 1)]


def p99_rate(
    profile: Profile,
    *,
    ttft_slo_s: float,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    upper_rps: float,
    requests: int = 3000,
    seed: int = 0,
    rel_tol: float = 0.02,
) -> float:
    """The largest arrival rate in ``(0, upper_rps]`` at which :func:`p99_ttft` stays within
    ``ttft_slo_s`` (bisection to ``rel_tol``; 0 if even ``upper_rps / 64`` misses)."""

    def ok(rate: float) -> bool:
        p99 = p99_ttft(
            profile,
            rate,
            mean_prompt_tokens=mean_prompt_tokens,
            mean_output_tokens=mean_output_tokens,
            requests=requests,
            seed=seed,
        )
        return p99 <= ttft_slo_s

    if ok(upper_rps):
        return upper_rps
    lo, hi = upper_rps / 64, upper_rps
    if not ok(lo):
        return 0.0
    while hi - lo > rel_tol * lo:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


# ---------------------------------------------------------------------------------------------
# The measured grid


Grid = Mapping[str, object]


def _interp(xs: Sequence[float], x: float) -> tuple[int, int, float]:
    """Neighbouring grid indices of ``x`` and the weight of the upper one (log scale, clamped)."""
    if x <= xs[0]:
        return 0, 0, 0.0
    if x >= xs[-1]:
        return len(xs) - 1, len(xs) - 1, 0.0
    j = bisect.bisect_right(xs, x)
    lo, hi = xs[j - 1], xs[j]
    return j - 1, j, math.log(x / lo) / math.log(hi / lo)


def calibrated_ratio(
    table: Mapping[str, Grid],
    profile: Profile,
    *,
    ttft_slo_s: float,
    itl_slo_s: float,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
) -> float | None:
    """The measured p99-within-target rate of ``profile`` at these mean lengths as a share of
    its analytic ``slo_capacity``, interpolated log-bilinearly over the grid of ``table``
    (clamped at its edges); None when the profile or the targets were not measured."""
    entry = table.get(profile_key(profile))
    if entry is None:
        return None
    if abs(_num(entry["ttft_slo_s"]) - ttft_slo_s) > 1e-9:
        return None
    if abs(_num(entry["itl_slo_s"]) - itl_slo_s) > 1e-9:
        return None
    prompts = _nums(entry["prompts"])
    outputs = _nums(entry["outputs"])
    ratio = [_nums(row) for row in entry["ratio"]]  # type: ignore[attr-defined]
    i0, i1, wi = _interp(prompts, mean_prompt_tokens)
    j0, j1, wj = _interp(outputs, mean_output_tokens)
    return (
        (1 - wi) * (1 - wj) * ratio[i0][j0]
        + (1 - wi) * wj * ratio[i0][j1]
        + wi * (1 - wj) * ratio[i1][j0]
        + wi * wj * ratio[i1][j1]
    )


def _num(x: object) -> float:
    assert isinstance(x, int | float)
    return float(x)


def _nums(xs: object) -> list[float]:
    assert isinstance(xs, tuple | list)
    return [_num(x) for x in xs]


def planned_rate(analytic_rps: float, utilisation: float, ratio: float | None) -> float:
    """Requests/s a replica is planned to carry: ``analytic × utilisation``, never above the
    calibrated p99-within-target rate (``ratio × analytic``) when there is one.  A shape at
    which no load holds the p99 target (ratio 0: prompts whose prefill alone is near the
    target) keeps ``RATIO_FLOOR`` of its analytic capacity, a best effort that stays finite."""
    planned = analytic_rps * utilisation
    return planned if ratio is None else min(planned, max(ratio, RATIO_FLOOR) * analytic_rps)
