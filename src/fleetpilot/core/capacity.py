"""Capacity planning vocabulary and capacity at the SLO.

Capacity policies (the controller's and the simulator's) are pure functions::

    policy(snapshot, state, params) -> (Plan, state)

``snapshot`` is a :class:`~fleetpilot.core.model.Snapshot` whose ``pools`` carry their
offering, profile and current target and whose ``demand`` is what was observed over the last
control interval; ``state`` is whatever the policy keeps between calls (``None`` at first).
They are chosen by name from ``CAPACITY_POLICIES`` (see :mod:`fleetpilot.core.policies`).

:func:`slo_capacity` answers the question every policy asks: how much traffic can one replica
of a pool carry while TTFT and inter-token latency stay within target?  It uses the same
continuous-batching model the router predicts with and the emulator executes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetpilot.core.calibration import calibrated_ratio, planned_rate
from fleetpilot.core.calibration_data import TABLE
from fleetpilot.core.model import Demand, Profile, ServiceClass
from fleetpilot.core.perf import step_time

__all__ = [
    "KNOBS",
    "Demand",
    "Plan",
    "PlanParams",
    "SloCapacity",
    "check_knobs",
    "knob",
    "planned_capacity",
    "slo_capacity",
]

# Every name a capacity policy reads from ``PlanParams.extra``: the adaptive planner's
# (:mod:`fleetpilot.core.planner`, where each is explained with its default and why), the
# baselines' (:mod:`fleetpilot.core.policies`), and the trace extent the engines pass to the
# static policies.  One list, so a misspelt knob in a config is an error, not a default.
KNOBS = frozenset(
    {
        # adaptive
        "drain_reserve", "hold_s", "max_remove_per_step", "max_remove_share", "mip_rel_gap",
        "mix_hysteresis", "reserve_s", "silent_hold_s", "size_threshold_tokens", "spot_cooldown_s",
        "spot_loss_market", "spot_loss_safety", "spot_max_share", "surge_learn", "surge_min",
        "time_limit_s", "upper_credit",
        # baselines
        "downscale_delay_s", "fallback_downscale_delay_s", "spot_extra", "spot_spread",
        "target_ongoing_requests", "upscale_delay_s",
        # the engines, for static_peak / static_mean
        "peak_rps", "mean_rps",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Plan:
    """A capacity decision, as data: replicas wanted per pool, and who to shed if capped."""

    targets: dict[str, int]
    shed: tuple[ServiceClass, ...] = ()
    note: str = ""
    cost_per_hour: float = 0.0


@dataclass(frozen=True, slots=True)
class PlanParams:
    """Targets and knobs shared by capacity policies."""

    ttft_slo_s: float = 2.0
    itl_slo_s: float = 0.2
    utilisation: float = 0.8  # plan each replica to this share of its SLO capacity
    safety: float = 1.2  # headroom on top of the forecast
    spend_cap_per_hour: float = float("inf")
    min_replicas: int = 1
    extra: dict[str, float] = field(default_factory=dict)
    # measured capacity at the SLO per profile (fleetpilot.core.calibration); {} plans analytically
    calibration: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: TABLE)


@dataclass(frozen=True, slots=True)
class SloCapacity:
    batch: int  # sequences per replica at the chosen operating point
    requests_per_s: float
    output_tokens_per_s: float
    step_s: float  # duration of one step (decode + the prefill admitted on it)


def slo_capacity(
    profile: Profile,
    *,
    ttft_slo_s: float,
    itl_slo_s: float,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
) -> SloCapacity:
    """The busiest steady state of one replica that still meets both latency targets.

    At batch ``b`` in steady state, ``b / O`` sequences finish and as many are admitted per
    step, so a step lasts ``d = step_time(b) + (b / O) * P / prefill_rate`` and the replica
    serves ``(b / O) / d`` requests per second.  A newcomer waits on average half a step, then
    its own step: TTFT ≈ 1.5 d, and every later token arrives d apart.  The largest ``b`` with
    ``d <= itl`` and ``1.5 d + P / prefill_rate <= ttft`` is the operating point; if even a batch
    of one misses, the replica is still given its batch-of-one rate (its best effort).
    """
    out = max(mean_output_tokens, 1.0)
    prefill_s = mean_prompt_tokens / profile.prefill_rate
    best: SloCapacity | None = None
    for b in range(1, profile.max_batch + 1):
        d = step_time(profile, b) + (b / out) * prefill_s
        if best is not None and (d > itl_slo_s or 1.5 * d + prefill_s > ttft_slo_s):
            break
        rps = (b / out) / d
        best = SloCapacity(batch=b, requests_per_s=rps, output_tokens_per_s=rps * out, step_s=d)
    assert best is not None
    return best


@functools.lru_cache(maxsize=8192)
def _packaged_ratio(
    profile: Profile, ttft: float, itl: float, prompt: float, output: float
) -> float | None:
    return calibrated_ratio(
        TABLE,
        profile,
        ttft_slo_s=ttft,
        itl_slo_s=itl,
        mean_prompt_tokens=prompt,
        mean_output_tokens=output,
    )


def planned_capacity(
    profile: Profile,
    params: PlanParams,
    *,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    analytic_rps: float,
) -> float:
    """Requests/s one replica is planned to carry: its analytic SLO capacity (``analytic_rps``,
    from :func:`slo_capacity` at these lengths and ``params``' targets) × ``utilisation``, but
    never above the rate at which it was measured to keep p99 TTFT within target
    (``params.calibration``; see :mod:`fleetpilot.core.calibration`)."""
    args = (profile, params.ttft_slo_s, params.itl_slo_s, mean_prompt_tokens, mean_output_tokens)
    if params.calibration is TABLE:
        ratio = _packaged_ratio(*args)
    else:
        ratio = calibrated_ratio(
            params.calibration,
            profile,
            ttft_slo_s=params.ttft_slo_s,
            itl_slo_s=params.itl_slo_s,
            mean_prompt_tokens=mean_prompt_tokens,
            mean_output_tokens=mean_output_tokens,
        )
    return planned_rate(analytic_rps, params.utilisation, ratio)


def check_knobs(extra: Mapping[str, float]) -> None:
    """Raise ``ValueError`` naming any key of ``extra`` that no policy reads."""
    unknown = sorted(set(extra) - KNOBS)
    if unknown:
        raise ValueError(f"unknown planner knob(s) {unknown}; known: {sorted(KNOBS)}")


def knob(params: PlanParams, name: str, default: float) -> float:
    """``params.extra[name]`` as a float, else ``default``; ``name`` must be in :data:`KNOBS`."""
    if name not in KNOBS:
        raise ValueError(f"{name!r} is not in KNOBS: add it there")
    return float(params.extra.get(name, default))
