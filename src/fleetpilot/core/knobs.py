"""The capacity policies' knobs: one frozen, validated dataclass per group, defaults here only.

A knob is set by name (``fleetpilot simulate --set hold_s=600``, the controller's
``plan.knobs``) through :meth:`~fleetpilot.core.capacity.PlanParams.with_knobs`; a name no
group has is an error, never a silent default.  A name two groups share (``spot_cooldown_s``:
the adaptive planner and SpotHedge wait the same time after a spot pool lost capacity) sets
both.  Why each default has its value, and what the others measured, is in
``bench/README.md`` (the capacity section): code keeps the rule, the bench keeps the figures.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SPOT_COOLDOWN_S",
    "AdaptiveKnobs",
    "MixKnobs",
    "ReactiveKnobs",
    "SpotHedgeKnobs",
    "StaticKnobs",
    "knob_fields",
]

SPOT_COOLDOWN_S = 1800.0  # a spot pool that lost capacity gets none new for this long


def _check(obj: Any, *, shares: tuple[str, ...] = (), positive: tuple[str, ...] = ()) -> None:
    """Every knob a number (or None where allowed), not NaN, not negative; ``shares`` within
    [0, 1]; ``positive`` above 0; int fields whole."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None and "None" in str(f.type):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"knob {f.name} must be a number, not {value!r}")
        if value < 0 or (f.name in positive and value <= 0):
            raise ValueError(
                f"knob {f.name} must be {'positive' if f.name in positive else '>= 0'}, not {value}"
            )
        if f.name in shares and value > 1:
            raise ValueError(f"knob {f.name} is a share: at most 1, not {value}")
        if str(f.type).startswith("int") and not isinstance(value, int):
            raise ValueError(f"knob {f.name} must be a whole number, not {value!r}")


@dataclass(frozen=True, slots=True)
class MixKnobs:
    """The mix program's (:mod:`fleetpilot.core.mix`), read by every caller of ``plan_mix``."""

    # after one spot event the fleet still carries this × the expected demand (planned headroom)
    spot_loss_safety: float = 1.0
    # 1: a spot event takes the fullest zone of every spot pool at once; 0: of one pool
    spot_loss_market: float = 1.0
    spot_max_share: float = 2 / 3  # most of the spot capacity one pool may hold
    size_threshold_tokens: int = 1024  # prompts this long or longer are the "large" class
    mip_rel_gap: float = 0.02
    time_limit_s: float = 1.0

    def __post_init__(self) -> None:
        _check(
            self,
            shares=("spot_max_share", "mip_rel_gap"),
            positive=("spot_max_share", "time_limit_s"),
        )


@dataclass(frozen=True, slots=True)
class AdaptiveKnobs:
    """The adaptive policy's shaping (:mod:`fleetpilot.core.adaptive`)."""

    # how much of the utilisation headroom the forecast's upper quantile may use (1: all)
    upper_credit: float = 1.0
    hold_s: float = 300.0  # planned demand is the largest of this long: grow at once, shrink late
    mix_hysteresis: float = 0.05  # a mix that opens pools must save more than this share
    max_remove_per_step: int = 2
    max_remove_share: float = 0.0  # or this share of the fleet per step, whichever is more
    drain_reserve: float = 2.2  # capacity kept ≥ this × the largest rate of reserve_s ...
    reserve_s: float = 7200.0  # ... above it, a surplus goes at once
    silent_hold_s: float = 7200.0  # a model gone quiet (no signal) removes nothing this long
    # the surge floor: SLO capacity for the largest surge seen so far (surge_learn > 0) × the
    # reserve_s peak, and at least surge_min × it: learnt from the series, not a constant
    surge_min: float = 0.0
    surge_learn: float = 1.0
    spot_cooldown_s: float = SPOT_COOLDOWN_S
    spot_backoff_max: float = 16.0  # a pool short again soon waits up to this × the cool-down
    # planned demand × this quantile (over intervals, request-weighted) of the learnt excess
    # burstiness over Poisson (core.burstiness); 0: off
    burst_quantile: float = 0.9
    burst_half_life_s: float = 6 * 3600.0  # how fast old intervals' burstiness is forgotten

    def __post_init__(self) -> None:
        _check(self, shares=("upper_credit", "max_remove_share", "burst_quantile"))


@dataclass(frozen=True, slots=True)
class ReactiveKnobs:
    """Target tracking (``reactive``): Ray Serve's and KServe's defaults."""

    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    # in-flight requests per replica; None: the cheapest pool's SLO batch × utilisation
    target_ongoing_requests: float | None = None

    def __post_init__(self) -> None:
        _check(self, positive=("target_ongoing_requests",))


@dataclass(frozen=True, slots=True)
class SpotHedgeKnobs:
    """SkyServe's SpotHedge (``spot_hedge``): its paper's defaults."""

    spot_spread: int = 2  # spot pools the demand is split over
    spot_extra: int = 1  # spare spot replicas
    fallback_downscale_delay_s: float = 300.0
    spot_cooldown_s: float = SPOT_COOLDOWN_S

    def __post_init__(self) -> None:
        _check(self, positive=("spot_spread",))


@dataclass(frozen=True, slots=True)
class StaticKnobs:
    """The static fleets' sizes (requests/s); the simulators pass the trace's peak and mean
    unless given, a live controller has to be told (else: first observed rate × safety)."""

    peak_rps: float | None = None
    mean_rps: float | None = None

    def __post_init__(self) -> None:
        _check(self)


_GROUPS: dict[str, type] = {
    "mix": MixKnobs,
    "adaptive": AdaptiveKnobs,
    "reactive": ReactiveKnobs,
    "spot_hedge": SpotHedgeKnobs,
    "static": StaticKnobs,
}


def knob_fields() -> dict[str, tuple[str, ...]]:
    """Knob name → the ``PlanParams`` groups that have it."""
    out: dict[str, tuple[str, ...]] = {}
    for group, cls in _GROUPS.items():
        for f in dataclasses.fields(cls):
            out[f.name] = (*out.get(f.name, ()), group)
    return out


def grouped(knobs: Mapping[str, float]) -> dict[str, dict[str, float | int]]:
    """``knobs`` by group, each value converted to its field's type; unknown names raise
    ``ValueError`` naming them and every known one."""
    where = knob_fields()
    unknown = sorted(set(knobs) - set(where))
    if unknown:
        raise ValueError(f"unknown planner knob(s) {unknown}; known: {sorted(where)}")
    out: dict[str, dict[str, float | int]] = {}
    for name, value in knobs.items():
        for group in where[name]:
            f = next(f for f in dataclasses.fields(_GROUPS[group]) if f.name == name)
            number = float(value)
            whole = str(f.type).startswith("int")
            if whole and not number.is_integer():
                raise ValueError(f"knob {name} must be a whole number, not {value!r}")
            out.setdefault(group, {})[name] = int(number) if whole else number
    return out
