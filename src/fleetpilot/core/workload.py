"""Synthetic request traces: a diurnal cycle, random bursts and heavy-tailed lengths.

Every command can run without data: :func:`synthetic_trace` makes a trace from a seed alone,
and the same seed always gives the same trace (two generators seeded from it: one for arrival
times, one for request sizes, so changing a length parameter keeps the arrivals).

Arrivals are a non-homogeneous Poisson process drawn by thinning (Lewis & Shedler): candidates
come at the peak rate and each is kept with probability ``rate(t) / peak``.  The rate is::

    rate(t) = base * (1 - amplitude * cos(2 pi t / period)) * (multiplier if in a burst else 1)

so a "day" starts at its quietest, peaks half-way through and ends quiet again.  Bursts start
as a Poisson process (``burst_rate_per_period`` per period) and last ``burst_len_s``.  ``base``
is chosen so that the expected mean rate over the trace is ``mean_rps``.

Token lengths are lognormal, clipped to bounds.  The default spread (sigma 1.0) is that of the
Azure LLM inference trace 2023 (conversation: log-sd 0.99 for prompts, 0.86 for outputs); the
default medians (256 / 96 tokens) are smaller than Azure's (1,020 / 129) to keep demos light.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from fleetpilot.core.model import ServiceClass

__all__ = [
    "STRESS_FAMILIES",
    "Bursts",
    "Event",
    "LengthDist",
    "StressSpec",
    "TraceRequest",
    "envelope",
    "rate_at",
    "stress_trace",
    "synthetic_trace",
]


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace; ``arrival`` is seconds from the start of the trace."""

    arrival: float
    prompt_tokens: int
    max_tokens: int
    service_class: ServiceClass = ServiceClass.INTERACTIVE
    tenant: str = "default"


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A lognormal token count with median ``median`` and log-sd ``sigma``, clipped."""

    median: float
    sigma: float
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.median <= 0 or self.sigma < 0 or not 1 <= self.low <= self.high:
            raise ValueError(f"bad length distribution {self}")

    def draw(self, rng: random.Random) -> int:
        value = round(self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0)))
        return min(max(value, self.low), self.high)


PROMPT_LENGTHS = LengthDist(median=256, sigma=1.0, low=16, high=4096)
OUTPUT_LENGTHS = LengthDist(median=96, sigma=1.0, low=8, high=1024)
TENANTS = ("acme", "globex", "initech")


def rate_at(t: float, base: float, amplitude: float, period_s: float) -> float:
    """The diurnal part of the rate at ``t`` (requests per second), bursts excluded."""
    return base * (1.0 - amplitude * math.cos(2.0 * math.pi * t / period_s))


def _bursts(rng: random.Random, duration_s: float, per_s: float, length_s: float) -> list[float]:
    """Start times of bursts: a Poisson process of rate ``per_s`` on [0, duration_s)."""
    starts: list[float] = []
    if per_s <= 0 or length_s <= 0:
        return starts
    t = rng.expovariate(per_s)
    while t < duration_s:
        starts.append(t)
        t += rng.expovariate(per_s)
    return starts


def synthetic_trace(
    duration_s: float,
    mean_rps: float,
    seed: int,
    *,
    diurnal_amplitude: float = 0.6,
    period_s: float | None = None,
    burst_rate_per_period: float = 3.0,
    burst_multiplier: float = 2.0,
    burst_len_s: float | None = None,
    batch_fraction: float = 0.1,
    prompt: LengthDist = PROMPT_LENGTHS,
    output: LengthDist = OUTPUT_LENGTHS,
    tenants: tuple[str, ...] = TENANTS,
) -> tuple[TraceRequest, ...]:
    """A trace of about ``duration_s * mean_rps`` requests, sorted by arrival.

    ``period_s`` (default: the whole trace, one "day" compressed) is the diurnal period;
    ``burst_len_s`` defaults to 1/30 of it.  A ``batch_fraction`` share of requests is batch
    work; tenants are drawn with Zipf weights (the first is the busiest).
    """
    if duration_s <= 0 or mean_rps < 0:
        raise ValueError("duration_s must be positive and mean_rps not negative")
    if not 0.0 <= diurnal_amplitude <= 1.0:
        raise ValueError("diurnal_amplitude must be within [0, 1]")
    if burst_multiplier < 1.0 or not 0.0 <= batch_fraction <= 1.0 or not tenants:
        raise ValueError("burst_multiplier >= 1, batch_fraction in [0, 1], tenants non-empty")
    period = duration_s if period_s is None else period_s
    if period <= 0:
        raise ValueError("period_s must be positive")
    burst_len = period / 30.0 if burst_len_s is None else burst_len_s

    arrivals_rng = random.Random(f"fleetpilot-trace/{seed}/arrivals")
    sizes_rng = random.Random(f"fleetpilot-trace/{seed}/sizes")

    burst_per_s = burst_rate_per_period / period
    # Expected share of time in a burst (overlaps ignored): scale base so the mean holds.
    burst_share = min(burst_per_s * burst_len, 1.0)
    base = mean_rps / (1.0 + burst_share * (burst_multiplier - 1.0))
    starts = _bursts(arrivals_rng, duration_s, burst_per_s, burst_len)
    peak = base * (1.0 + diurnal_amplitude) * (burst_multiplier if starts else 1.0)

    times: list[float] = []
    if peak > 0:
        t = arrivals_rng.expovariate(peak)
        b = 0  # first burst not yet over; bursts end in the order they start
        while t < duration_s:
            while b < len(starts) and starts[b] + burst_len <= t:
                b += 1
            in_burst = b < len(starts) and starts[b] <= t
            rate = rate_at(t, base, diurnal_amplitude, period)
            rate *= burst_multiplier if in_burst else 1.0
            if arrivals_rng.random() * peak < rate:
                times.append(t)
            t += arrivals_rng.expovariate(peak)

    weights = [1.0 / (i + 1) for i in range(len(tenants))]
    out: list[TraceRequest] = []
    for t in times:
        batch = sizes_rng.random() < batch_fraction
        cls = ServiceClass.BATCH if batch else ServiceClass.INTERACTIVE
        out.append(
            TraceRequest(
                arrival=t,
                prompt_tokens=prompt.draw(sizes_rng),
                max_tokens=output.draw(sizes_rng),
                service_class=cls,
                tenant=sizes_rng.choices(tenants, weights)[0],
            )
        )
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Stress families: traffic no shared trace has, from a seed


@dataclass(frozen=True, slots=True)
class Bursts:
    """On-off modulation inside the envelope (an MMPP): bursts at ``multiplier`` × the rate,
    ``length_s`` long on average, carrying a ``share`` of all requests.  Short bursts at a
    high multiplier are what raise the inter-arrival coefficient of variation far above 1."""

    multiplier: float
    length_s: float
    share: float

    def __post_init__(self) -> None:
        if self.multiplier <= 1 or self.length_s <= 0 or not 0 < self.share < 1:
            raise ValueError(f"bad bursts {self}")
        if self.share / self.multiplier >= 1:
            raise ValueError("bursts would fill all the time")


@dataclass(frozen=True, slots=True)
class Event:
    """The rate × ``factor`` over ``[start_s, start_s + length_s)``: an outage (0) or a flash
    crowd (> 1), reached within ``ramp_s`` and left as fast."""

    start_s: float
    length_s: float
    factor: float
    ramp_s: float = 30.0


@dataclass(frozen=True, slots=True)
class StressSpec:
    """One stress family's shape (see :data:`STRESS_FAMILIES`)."""

    diurnal_amplitude: float = 0.5
    trend: float = 1.0  # the rate at the end over the rate at the start (linear)
    bursts: Bursts | None = None
    events: tuple[Event, ...] = ()
    prompt: LengthDist = PROMPT_LENGTHS
    output: LengthDist = OUTPUT_LENGTHS
    batch_fraction: float = 0.0
    # each arrival a clump of requests (geometric, this mean) spread over clump_s: a client
    # fanning out, a retry storm, a scheduled job; 1 is plain Poisson
    clump_mean: float = 1.0
    clump_s: float = 1.0


def envelope(spec: StressSpec, t: float, duration_s: float) -> float:
    """The slow part of the relative rate at ``t``: diurnal × trend × events (no bursts)."""
    rate = 1.0 - spec.diurnal_amplitude * math.cos(2.0 * math.pi * t / duration_s)
    rate *= 1.0 + (spec.trend - 1.0) * t / duration_s
    for e in spec.events:
        if e.start_s - e.ramp_s < t < e.start_s + e.length_s + e.ramp_s:
            into = min(t - (e.start_s - e.ramp_s), e.start_s + e.length_s + e.ramp_s - t)
            w = min(max(into / e.ramp_s, 0.0), 1.0) if e.ramp_s > 0 else 1.0
            rate *= 1.0 + (e.factor - 1.0) * w
    return max(rate, 0.0)


def stress_trace(
    spec: StressSpec, duration_s: float, mean_rps: float, seed: int
) -> tuple[TraceRequest, ...]:
    """About ``duration_s × mean_rps`` requests of ``spec``'s shape (the mean holds before
    events: an outage removes its share, a flash crowd adds to it), sorted by arrival.

    Arrivals thin a Poisson stream at the peak rate (as :func:`synthetic_trace`); bursts are
    an on-off state drawn alongside (start rate ``share / multiplier / length_s``, exponential
    lengths), with the rate outside them lowered so that the bursts carry ``share``."""
    if duration_s <= 0 or mean_rps <= 0:
        raise ValueError("duration_s and mean_rps must be positive")
    arrivals_rng = random.Random(f"fleetpilot-stress/{seed}/arrivals")
    sizes_rng = random.Random(f"fleetpilot-stress/{seed}/sizes")
    steps = 2000
    grid = [envelope(spec, duration_s * (i + 0.5) / steps, duration_s) for i in range(steps)]
    quiet = [
        envelope(replace(spec, events=()), duration_s * (i + 0.5) / steps, duration_s)
        for i in range(steps)
    ]
    scale = mean_rps / (sum(quiet) / steps) / max(spec.clump_mean, 1.0)
    top = max(grid) * scale * 1.05
    b = spec.bursts
    on_share = b.share / b.multiplier if b else 0.0
    off_level = (1.0 - b.share) / (1.0 - on_share) if b else 1.0
    peak = top * (b.multiplier if b else 1.0)
    starts_per_s = on_share / b.length_s / (1.0 - on_share) if b else 0.0

    times: list[float] = []
    t = 0.0
    burst_end = -1.0
    next_burst = arrivals_rng.expovariate(starts_per_s) if b else math.inf
    while True:
        t += arrivals_rng.expovariate(peak)
        if t >= duration_s:
            break
        while b and next_burst <= t:
            burst_end = max(burst_end, next_burst + arrivals_rng.expovariate(1.0 / b.length_s))
            next_burst += arrivals_rng.expovariate(starts_per_s)
        level = (b.multiplier if t < burst_end else off_level) if b else 1.0
        rate = envelope(spec, t, duration_s) * scale * level
        if arrivals_rng.random() * peak < rate:
            times.append(t)
    if spec.clump_mean > 1.0:
        p = 1.0 / spec.clump_mean  # geometric on 1, 2, ...: mean clump_mean
        clumped: list[float] = []
        for t in times:
            k = 1 + int(math.log(1.0 - arrivals_rng.random()) / math.log(1.0 - p))
            clumped.extend(t + spec.clump_s * arrivals_rng.random() for _ in range(k))
        times = sorted(x for x in clumped if x < duration_s)
    out: list[TraceRequest] = []
    for t in times:
        cls = (
            ServiceClass.BATCH
            if sizes_rng.random() < spec.batch_fraction
            else ServiceClass.INTERACTIVE
        )
        out.append(TraceRequest(t, spec.prompt.draw(sizes_rng), spec.output.draw(sizes_rng), cls))
    return tuple(out)


LONG_PROMPTS = LengthDist(median=1500, sigma=0.7, low=64, high=8000)
LONG_OUTPUTS = LengthDist(median=600, sigma=0.7, low=16, high=4000)
_H = 3600.0

# Seeded stress families (4-hour traces): each pushes one way past what the shared traces show.
STRESS_FAMILIES: dict[str, StressSpec] = {
    "bursty-cv3": StressSpec(bursts=Bursts(multiplier=6.0, length_s=20.0, share=0.3)),
    "bursty-cv10": StressSpec(
        bursts=Bursts(multiplier=6.0, length_s=30.0, share=0.3),
        clump_mean=50.0,
        clump_s=3.0,
        prompt=LONG_PROMPTS,
    ),
    "long-prompt": StressSpec(prompt=LONG_PROMPTS),
    "long-output": StressSpec(output=LONG_OUTPUTS),
    "outage": StressSpec(
        events=(Event(0.6 * _H, 0.2 * _H, 0.0, 20.0), Event(2.0 * _H, 1.2 * _H, 0.0, 20.0))
    ),
    "flash-crowd": StressSpec(
        events=(Event(1.3 * _H, 0.25 * _H, 4.0, 30.0), Event(3.1 * _H, 0.3 * _H, 3.0, 30.0))
    ),
    "trend": StressSpec(trend=3.0, diurnal_amplitude=0.3),
}
