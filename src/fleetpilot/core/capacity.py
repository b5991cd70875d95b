"""Capacity planning vocabulary, and the one rule for how much load a replica carries.

Capacity policies (the controller's and the simulator's) are pure functions::

    policy(snapshot, state, params) -> (Plan, state)

``snapshot`` is a :class:`~fleetpilot.core.model.Snapshot` whose ``pools`` carry their
offering, profile and current target and whose ``demand`` is what was observed over the last
control interval; ``state`` is whatever the policy keeps between calls (``None`` at first).
They are chosen by name from ``CAPACITY_POLICIES`` (see :mod:`fleetpilot.core.policies`).

Every policy, the mix program, the offline optimum, the advisor and the simulators size
replicas with the two functions here, so they cannot disagree:

* :func:`slo_table` (and its one-shape form :func:`slo_capacity`): how much traffic one
  replica carries while TTFT and inter-token latency stay within target, from the same
  continuous-batching model the router predicts with and the emulator executes;
* :func:`replica_capacity` (and :func:`replica_capacity_table` for many windows): what a
  replica is *planned* to carry: that capacity at lengths rounded up onto a 2.2% grid (so
  shapes can be cached), × ``utilisation``, capped at the rate at which it was measured to
  hold p99 TTFT (:mod:`fleetpilot.core.calibration`), and for spot × the expected share not
  pre-empted while a replacement starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fleetpilot.core.calibration import calibrated_ratio, planned_rate
from fleetpilot.core.calibration_data import TABLE
from fleetpilot.core.knobs import (
    AdaptiveKnobs,
    MixKnobs,
    ReactiveKnobs,
    SpotHedgeKnobs,
    StaticKnobs,
    grouped,
    knob_fields,
)
from fleetpilot.core.model import CapacityClass, Demand, Offering, Pool, Profile, ServiceClass
from fleetpilot.core.perf import step_time

__all__ = [
    "KNOBS",
    "Demand",
    "Plan",
    "PlanParams",
    "SloCapacity",
    "SloTable",
    "check_knobs",
    "plan_cost",
    "replica_capacity",
    "replica_capacity_table",
    "slo_capacity",
    "slo_table",
    "spot_survival",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Every knob name a capacity policy reads (core.knobs): a misspelt one is an error.
KNOBS = frozenset(knob_fields())


@dataclass(frozen=True, slots=True)
class Plan:
    """A capacity decision, as data: replicas wanted per pool, and who to shed if capped."""

    targets: dict[str, int]
    shed: tuple[ServiceClass, ...] = ()
    note: str = ""
    cost_per_hour: float = 0.0


@dataclass(frozen=True, slots=True)
class PlanParams:
    """Targets shared by capacity policies, and each policy's knobs (:mod:`.knobs`)."""

    ttft_slo_s: float = 2.0
    itl_slo_s: float = 0.2
    utilisation: float = 0.8  # plan each replica to this share of its SLO capacity
    safety: float = 1.2  # headroom on top of the forecast
    spend_cap_per_hour: float = float("inf")
    min_replicas: int = 1
    # measured capacity at the SLO per profile (fleetpilot.core.calibration); {} plans analytically
    calibration: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: TABLE)
    mix: MixKnobs = field(default_factory=MixKnobs)
    adaptive: AdaptiveKnobs = field(default_factory=AdaptiveKnobs)
    reactive: ReactiveKnobs = field(default_factory=ReactiveKnobs)
    spot_hedge: SpotHedgeKnobs = field(default_factory=SpotHedgeKnobs)
    static: StaticKnobs = field(default_factory=StaticKnobs)

    def with_knobs(self, knobs: Mapping[str, float]) -> PlanParams:
        """These params with ``knobs`` set by name (``ValueError`` for a name no policy has)."""
        changes = {
            group: dataclasses.replace(getattr(self, group), **values)
            for group, values in grouped(knobs).items()
        }
        return dataclasses.replace(self, **changes)

    def with_extent(self, peak_rps: float, mean_rps: float) -> PlanParams:
        """These params with the static fleets' sizes set where they were not given: what a
        simulator that knows its whole trace tells the static policies."""
        s = self.static
        static = StaticKnobs(
            peak_rps=peak_rps if s.peak_rps is None else s.peak_rps,
            mean_rps=mean_rps if s.mean_rps is None else s.mean_rps,
        )
        return dataclasses.replace(self, static=static)

    @property
    def knobs(self) -> dict[str, float]:
        """The knobs that differ from their defaults, by name (what ``with_knobs`` would set)."""
        out: dict[str, float] = {}
        for group in ("mix", "adaptive", "reactive", "spot_hedge", "static"):
            value = getattr(self, group)
            default = type(value)()
            for f in dataclasses.fields(value):
                mine = getattr(value, f.name)
                if mine != getattr(default, f.name) and mine is not None:
                    out[f.name] = float(mine)
        return out


def check_knobs(knobs: Mapping[str, float]) -> None:
    """Raise ``ValueError`` naming any key of ``knobs`` that no policy reads, or a bad value."""
    PlanParams().with_knobs(knobs)


# ---------------------------------------------------------------------------------------------
# Capacity at the SLO


@dataclass(frozen=True, slots=True)
class SloCapacity:
    batch: int  # sequences per replica at the chosen operating point
    requests_per_s: float
    output_tokens_per_s: float
    step_s: float  # duration of one step (decode + the prefill admitted on it)


@dataclass(frozen=True, slots=True)
class SloTable:
    """:func:`slo_table`'s answer per shape: operating batch, requests/s and step duration."""

    batch: IntArray
    requests_per_s: FloatArray
    step_s: FloatArray


@functools.lru_cache(maxsize=256)
def _step_times(profile: Profile) -> FloatArray:
    times = np.array([step_time(profile, b) for b in range(1, profile.max_batch + 1)])
    times.setflags(write=False)
    return times


def slo_table(
    profile: Profile,
    *,
    ttft_slo_s: float,
    itl_slo_s: float,
    mean_prompt_tokens: npt.ArrayLike,
    mean_output_tokens: npt.ArrayLike,
) -> SloTable:
    """The busiest steady state of one replica that still meets both latency targets, per
    shape (arrays of mean lengths).

    At batch ``b`` in steady state, ``b / O`` sequences finish and as many are admitted per
    step, so a step lasts ``d = step_time(b) + (b / O) * P / prefill_rate`` and the replica
    serves ``(b / O) / d`` requests per second.  A newcomer waits on average half a step, then
    its own step: TTFT ≈ 1.5 d, and every later token arrives d apart.  The largest ``b``
    whose every smaller batch too has ``d <= itl`` and ``1.5 d + P / prefill_rate <= ttft`` is
    the operating point; if even a batch of one misses, the replica is still given its
    batch-of-one rate (its best effort).
    """
    prompt = np.atleast_1d(np.asarray(mean_prompt_tokens, dtype=np.float64))
    out = np.maximum(np.atleast_1d(np.asarray(mean_output_tokens, dtype=np.float64)), 1.0)
    prompt, out = np.broadcast_arrays(prompt, out)
    prefill = prompt / profile.prefill_rate
    steps = _step_times(profile)[:, None]
    batches = np.arange(1, profile.max_batch + 1, dtype=np.float64)[:, None]
    d = steps + (batches / out[None, :]) * prefill[None, :]
    ok = (d <= itl_slo_s) & (1.5 * d + prefill[None, :] <= ttft_slo_s)
    ok[0] = True
    batch = np.cumprod(ok, axis=0).sum(axis=0).astype(np.int64)
    chosen = d[batch - 1, np.arange(d.shape[1])]
    rps = (batch / out) / chosen
    return SloTable(batch=batch, requests_per_s=rps, step_s=chosen)


@functools.lru_cache(maxsize=8192)
def _one_shape(
    profile: Profile, ttft: float, itl: float, prompt: float, output: float
) -> SloCapacity:
    t = slo_table(
        profile, ttft_slo_s=ttft, itl_slo_s=itl, mean_prompt_tokens=prompt,
        mean_output_tokens=output,
    )  # fmt: skip
    rps = float(t.requests_per_s[0])
    return SloCapacity(
        batch=int(t.batch[0]),
        requests_per_s=rps,
        output_tokens_per_s=rps * max(output, 1.0),
        step_s=float(t.step_s[0]),
    )


def slo_capacity(
    profile: Profile,
    *,
    ttft_slo_s: float,
    itl_slo_s: float,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
) -> SloCapacity:
    """:func:`slo_table` for one shape (cached)."""
    return _one_shape(
        profile, float(ttft_slo_s), float(itl_slo_s), float(mean_prompt_tokens),
        float(mean_output_tokens),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Planned capacity per replica


def _grid(x: npt.ArrayLike) -> FloatArray:
    """Lengths rounded up onto a geometric grid (2^(1/32) ≈ 2.2% apart), 1 at least."""
    a = np.maximum(np.atleast_1d(np.asarray(x, dtype=np.float64)), 1.0)
    return np.asarray(2.0 ** (np.ceil(32.0 * np.log2(a) - 1e-12) / 32.0))


def spot_survival(offering: Offering) -> float:
    """The share of a pool's replicas expected to survive while a replacement starts: spot
    loses ``interruption_rate × startup_s / 3600`` of them, other classes none."""
    if offering.capacity_class is not CapacityClass.SPOT:
        return 1.0
    return max(0.0, 1.0 - offering.interruption_rate * offering.startup_s / 3600.0)


@functools.lru_cache(maxsize=8192)
def _calibrated(
    profile: Profile, ttft: float, itl: float, prompt: float, output: float
) -> float | None:
    return calibrated_ratio(
        TABLE, profile, ttft_slo_s=ttft, itl_slo_s=itl, mean_prompt_tokens=prompt,
        mean_output_tokens=output,
    )  # fmt: skip


def _planned(
    profile: Profile, params: PlanParams, prompt: float, output: float, rps: float
) -> float:
    """``rps`` (the SLO capacity at these lengths) × utilisation, capped at the calibrated rate."""
    args = (profile, params.ttft_slo_s, params.itl_slo_s, prompt, output)
    if params.calibration is TABLE:
        ratio = _calibrated(*args)
    else:
        ratio = calibrated_ratio(
            params.calibration, profile, ttft_slo_s=params.ttft_slo_s,
            itl_slo_s=params.itl_slo_s, mean_prompt_tokens=prompt, mean_output_tokens=output,
        )  # fmt: skip
    return planned_rate(rps, params.utilisation, ratio)


def replica_capacity_table(
    pool: Pool,
    params: PlanParams,
    mean_prompt_tokens: npt.ArrayLike,
    mean_output_tokens: npt.ArrayLike,
) -> FloatArray:
    """Requests/s one replica of ``pool`` is planned to carry, per shape (see the module);
    0 everywhere for a pool without a profile."""
    prompt, output = np.broadcast_arrays(_grid(mean_prompt_tokens), _grid(mean_output_tokens))
    out = np.zeros(prompt.shape)
    profile = pool.profile
    if profile is None:
        return out
    shapes, index = np.unique(np.stack([prompt.ravel(), output.ravel()], axis=1), axis=0,
                              return_inverse=True)  # fmt: skip
    table = slo_table(
        profile, ttft_slo_s=params.ttft_slo_s, itl_slo_s=params.itl_slo_s,
        mean_prompt_tokens=shapes[:, 0], mean_output_tokens=shapes[:, 1],
    )  # fmt: skip
    survive = spot_survival(pool.offering)
    per_shape = np.array([
        _planned(profile, params, float(p), float(o), float(r)) * survive
        for (p, o), r in zip(shapes, table.requests_per_s, strict=True)
    ])  # fmt: skip
    return per_shape[np.asarray(index).ravel()].reshape(prompt.shape)


def replica_capacity(pool: Pool, demand: Demand, params: PlanParams) -> float:
    """Requests/s one replica of ``pool`` is planned to carry of ``demand``'s shape (module):
    the one-shape form of :func:`replica_capacity_table`, on the cached SLO capacity."""
    if pool.profile is None:
        return 0.0
    prompt, output = (
        float(v) for v in _grid([demand.mean_prompt_tokens, demand.mean_output_tokens])
    )
    rps = slo_capacity(
        pool.profile, ttft_slo_s=params.ttft_slo_s, itl_slo_s=params.itl_slo_s,
        mean_prompt_tokens=prompt, mean_output_tokens=output,
    ).requests_per_s  # fmt: skip
    return _planned(pool.profile, params, prompt, output, rps) * spot_survival(pool.offering)


def plan_cost(targets: Mapping[str, int], pools: Sequence[Pool]) -> float:
    """$/hour of ``targets`` (pools it does not name cost nothing)."""
    return math.fsum(targets.get(p.name, 0) * p.offering.price_per_hour for p in pools)
