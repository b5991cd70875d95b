"""Traffic as per-window statistics, spot markets as capacity per tick, and the way back.

Public traces come in two shapes: request logs (one row per request) and rate series (one row
per window: a rate, a burstiness, mean sizes).  :class:`RateSeries` is the second shape;
:func:`windows_of` turns a request trace into one and :func:`synthesise` turns one back into
requests, so a 14-day rate series can drive the simulator as well as an hour-long request log.

Arrivals in a window with rate ``r`` and coefficient of variation ``cv`` form a renewal process
with gamma gaps of mean ``1/r`` and shape ``1/cv**2`` (exponential, i.e. Poisson, when
``cv == 1``; evenly spaced when ``cv == 0``).  The process runs on across windows in
*operational time*: a gap that crosses a window boundary keeps its unfinished share of a mean
gap and finishes it at the next window's rate, so rate changes leave no edge artefacts, and a
window of rate 0 simply pauses it.  The first arrival comes after a draw from the equilibrium
(forward-recurrence) gap distribution, ``U * Gamma(shape + 1)``, so the series starts
stationary.  Prompt and output lengths are lognormal with the window's mean (clipped at one
token); the default spreads are the Azure LLM inference 2023 conversation trace's log-sd
(0.99 for prompts, 0.86 for outputs).

A trace made from a series starts at 0: request arrivals are always seconds from the start of
their own trace, while ``RateSeries.start_s`` remembers where a (sliced) series sits on the
time axis of the data it came from.

:class:`SpotMarket` is a spot availability or pre-emption trace: instances alive per tick.
:func:`spot_market_from_rate` draws pre-emption times from a Poisson rate when no trace is at
hand.  :func:`scale_trace` stretches or compresses a request trace and scales its rate.

Every random draw comes from ``random.Random`` seeded with a string that names the seed, so the
same seed always gives the same result.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeVar

from fleetpilot.core.model import ServiceClass
from fleetpilot.core.workload import TraceRequest

__all__ = [
    "RateSeries",
    "SpotMarket",
    "repeat_each",
    "scale_trace",
    "spot_market_from_rate",
    "synthesise",
    "windows_of",
]

T = TypeVar("T")


def repeat_each(xs: Sequence[T], k: int) -> list[T]:
    """Each item ``k`` times in a row: per-window values at ``k`` times the resolution."""
    return [x for x in xs for _ in range(k)]


def _finite_at_least(values: tuple[float, ...], low: float, strict: bool) -> bool:
    return all(math.isfinite(v) and (v > low if strict else v >= low) for v in values)


@dataclass(frozen=True, slots=True)
class RateSeries:
    """Traffic per window of ``window_s`` seconds; window ``i`` starts at
    ``start_s + i * window_s``.

    ``rps`` is the mean arrival rate, ``cv`` the coefficient of variation of inter-arrival
    times (1.0 = Poisson), ``mean_prompt_tokens`` / ``mean_output_tokens`` the mean request
    shape (meaningful even where the rate is 0, so a policy always has a shape to plan for).
    """

    window_s: float
    rps: tuple[float, ...]
    mean_prompt_tokens: tuple[float, ...]
    mean_output_tokens: tuple[float, ...]
    cv: tuple[float, ...]
    start_s: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be positive, not {self.window_s}")
        if not math.isfinite(self.start_s):
            raise ValueError("start_s must be finite")
        n = len(self.rps)
        columns = (self.mean_prompt_tokens, self.mean_output_tokens, self.cv)
        if any(len(c) != n for c in columns):
            raise ValueError("rps, mean_prompt_tokens, mean_output_tokens and cv differ in length")
        if not _finite_at_least(self.rps, 0.0, strict=False):
            raise ValueError("rates must be finite and not negative")
        if not _finite_at_least(self.cv, 0.0, strict=False):
            raise ValueError("cv must be finite and not negative")
        if not (
            _finite_at_least(self.mean_prompt_tokens, 0.0, strict=True)
            and _finite_at_least(self.mean_output_tokens, 0.0, strict=True)
        ):
            raise ValueError("mean token counts must be finite and positive")

    def __len__(self) -> int:
        return len(self.rps)

    @property
    def duration_s(self) -> float:
        return self.window_s * len(self.rps)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def total_requests(self) -> float:
        """The expected number of requests over the whole series."""
        return math.fsum(self.rps) * self.window_s

    def rps_at(self, t: float) -> float:
        """The rate of the window holding ``t`` (on the series' own time axis); 0 outside."""
        i = math.floor((t - self.start_s) / self.window_s)
        return self.rps[i] if 0 <= i < len(self.rps) else 0.0

    def scaled(self, *, rate: float = 1.0, time: float = 1.0) -> RateSeries:
        """``rate`` multiplies the number of requests; ``time`` stretches the time axis.

        ``time=0.5`` replays the same requests twice as fast: windows last half as long and
        their rates double, as :func:`scale_trace` does to a request trace.
        """
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate scale must be finite and not negative, not {rate}")
        if not (math.isfinite(time) and time > 0):
            raise ValueError(f"time scale must be finite and positive, not {time}")
        factor = rate / time
        return RateSeries(
            window_s=self.window_s * time,
            rps=tuple(r * factor for r in self.rps),
            mean_prompt_tokens=self.mean_prompt_tokens,
            mean_output_tokens=self.mean_output_tokens,
            cv=self.cv,
            start_s=self.start_s * time,
        )

    def refined(self, k: int) -> RateSeries:
        """Each window cut into ``k`` windows of ``window_s / k`` with the same rate, lengths and
        cv: no more than the series knows, at the cadence of a controller that looks every
        ``window_s / k`` seconds (a policy stepped once per window is blind to a jump for a
        whole window; a live controller is not)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if k == 1:
            return self
        return RateSeries(
            window_s=self.window_s / k,
            rps=tuple(repeat_each(self.rps, k)),
            mean_prompt_tokens=tuple(repeat_each(self.mean_prompt_tokens, k)),
            mean_output_tokens=tuple(repeat_each(self.mean_output_tokens, k)),
            cv=tuple(repeat_each(self.cv, k)),
            start_s=self.start_s,
        )

    def slice(self, start_s: float, end_s: float = math.inf) -> RateSeries:
        """The whole windows that overlap ``[start_s, end_s)``; ``start_s`` of the result is
        that of its first window (times on the series' own axis)."""
        if not end_s > start_s:
            raise ValueError(f"empty slice [{start_s}, {end_s})")
        n = len(self.rps)
        lo = min(max(math.floor((start_s - self.start_s) / self.window_s), 0), n)
        hi = n if end_s == math.inf else math.ceil((end_s - self.start_s) / self.window_s)
        hi = min(max(hi, lo), n)
        return RateSeries(
            window_s=self.window_s,
            rps=self.rps[lo:hi],
            mean_prompt_tokens=self.mean_prompt_tokens[lo:hi],
            mean_output_tokens=self.mean_output_tokens[lo:hi],
            cv=self.cv[lo:hi],
            start_s=self.start_s + lo * self.window_s,
        )


def _cv(gaps: list[float]) -> float:
    """Coefficient of variation of inter-arrival gaps; 1.0 (Poisson) when it is undefined."""
    if len(gaps) < 2:
        return 1.0
    mean = math.fsum(gaps) / len(gaps)
    if mean <= 0:
        return 1.0
    var = math.fsum((g - mean) ** 2 for g in gaps) / len(gaps)
    return math.sqrt(var) / mean


def windows_of(
    trace: Sequence[TraceRequest], window_s: float, *, duration_s: float | None = None
) -> RateSeries:
    """Aggregate a request trace into windows of ``window_s`` seconds starting at 0.

    The series covers ``duration_s`` (rounded up to whole windows; arrivals beyond it are
    left out) or, by default, up to the last arrival.  The CV of a window is that of the gaps
    between its own arrivals (1.0 with fewer than three arrivals); a window without requests
    gets the trace's overall mean lengths.
    """
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window_s must be positive, not {window_s}")
    arrivals = sorted(trace, key=lambda r: r.arrival)
    if duration_s is not None:
        if not (math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"duration_s must be finite and not negative, not {duration_s}")
        n = math.ceil(duration_s / window_s)
    else:
        n = math.floor(arrivals[-1].arrival / window_s) + 1 if arrivals else 0
    members: list[list[TraceRequest]] = [[] for _ in range(n)]
    for r in arrivals:
        i = math.floor(r.arrival / window_s)
        if 0 <= i < n:
            members[i].append(r)
    count = sum(len(m) for m in members)
    prompt_all = math.fsum(r.prompt_tokens for m in members for r in m) / count if count else 1.0
    output_all = math.fsum(r.max_tokens for m in members for r in m) / count if count else 1.0
    rps, prompt, output, cv = [], [], [], []
    for m in members:
        rps.append(len(m) / window_s)
        if m:
            prompt.append(max(math.fsum(r.prompt_tokens for r in m) / len(m), 1e-9))
            output.append(max(math.fsum(r.max_tokens for r in m) / len(m), 1e-9))
        else:
            prompt.append(max(prompt_all, 1e-9))
            output.append(max(output_all, 1e-9))
        cv.append(_cv([b.arrival - a.arrival for a, b in pairwise(m)]))
    return RateSeries(window_s, tuple(rps), tuple(prompt), tuple(output), tuple(cv))


def _gap(rng: random.Random, cv: float, *, equilibrium: bool = False) -> float:
    """A gap of the renewal process in units of its mean: Gamma(1/cv², scale cv²).

    With ``equilibrium`` it is the forward-recurrence time seen from an arbitrary instant:
    U * Gamma(1/cv² + 1) (the size-biased gap, cut uniformly).
    """
    if cv == 0:
        return rng.random() if equilibrium else 1.0
    shape = 1.0 / (cv * cv)
    if equilibrium:
        return rng.random() * rng.gammavariate(shape + 1.0, cv * cv)
    if cv == 1.0:
        return rng.expovariate(1.0)
    return rng.gammavariate(shape, cv * cv)


def _lognormal_around(rng: random.Random, mean: float, sigma: float) -> int:
    """A lognormal draw whose mean (before rounding and clipping) is ``mean``; at least 1."""
    mu = math.log(mean) - 0.5 * sigma * sigma
    return max(1, round(math.exp(mu + sigma * rng.gauss(0.0, 1.0))))


def synthesise(
    series: RateSeries,
    seed: int,
    *,
    prompt_sigma: float = 0.99,
    output_sigma: float = 0.86,
) -> tuple[TraceRequest, ...]:
    """Requests that follow ``series`` window by window (see the module docstring).

    Arrivals are seconds from the start of the series (``series.start_s`` maps to 0).  Sizes
    come from their own generator, so changing a sigma leaves the arrivals where they were.
    """
    if not (prompt_sigma >= 0 and output_sigma >= 0):
        raise ValueError("sigmas must not be negative")
    arrivals_rng = random.Random(f"fleetpilot-series/{seed}/arrivals")
    sizes_rng = random.Random(f"fleetpilot-series/{seed}/sizes")
    out: list[TraceRequest] = []
    interactive = ServiceClass.INTERACTIVE
    w = series.window_s
    owed: float | None = None  # mean gaps still to run until the next arrival
    for i, (rate, cv) in enumerate(zip(series.rps, series.cv, strict=True)):
        if rate <= 0:
            continue
        if owed is None:
            owed = _gap(arrivals_rng, cv, equilibrium=True)
        lo, hi = i * w, (i + 1) * w
        prompt_mean = series.mean_prompt_tokens[i]
        output_mean = series.mean_output_tokens[i]
        t = lo + owed / rate
        while t < hi:
            out.append(
                TraceRequest(
                    arrival=t,
                    prompt_tokens=_lognormal_around(sizes_rng, prompt_mean, prompt_sigma),
                    max_tokens=_lognormal_around(sizes_rng, output_mean, output_sigma),
                    service_class=interactive,
                )
            )
            t += _gap(arrivals_rng, cv) / rate
        owed = (t - hi) * rate
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SpotMarket:
    """Spot instances available (availability traces) or alive (pre-emption traces) per tick.

    Tick ``i`` covers ``[i * gap_s, (i + 1) * gap_s)``.
    """

    gap_s: float
    capacity: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gap_s) and self.gap_s > 0):
            raise ValueError(f"gap_s must be positive, not {self.gap_s}")
        if any(c < 0 for c in self.capacity):
            raise ValueError("capacity must not be negative")

    def __len__(self) -> int:
        return len(self.capacity)

    @property
    def duration_s(self) -> float:
        return self.gap_s * len(self.capacity)

    def preemptions(self) -> tuple[float, ...]:
        """When instances were lost: one time per lost instance, at the first tick that shows
        the lower count (the loss happened during the tick before)."""
        out: list[float] = []
        c = self.capacity
        for i in range(1, len(c)):
            if c[i] < c[i - 1]:
                out.extend([i * self.gap_s] * (c[i - 1] - c[i]))
        return tuple(out)

    def available_at(self, t: float) -> int:
        """The count at time ``t``; before the first tick the first, after the last the last."""
        if not self.capacity:
            return 0
        i = min(max(math.floor(t / self.gap_s), 0), len(self.capacity) - 1)
        return self.capacity[i]

    def scaled(self, *, time: float) -> SpotMarket:
        """The same market on a stretched (``time > 1``) or compressed time axis."""
        if not (math.isfinite(time) and time > 0):
            raise ValueError(f"time scale must be finite and positive, not {time}")
        return SpotMarket(self.gap_s * time, self.capacity)


def spot_market_from_rate(
    rate_per_hour: float, duration_s: float, seed: int, *, notice_s: float = 120.0
) -> tuple[float, ...]:
    """Pre-emption times of a Poisson process of ``rate_per_hour``, sorted.

    Times lie in ``[notice_s, duration_s)`` so that each pre-emption's notice (``notice_s``
    earlier: two minutes on AWS, 30 s on GCP) falls inside the run as well.  For a pool of
    ``n`` spot replicas pass ``n`` times the per-replica rate
    (``Offering.interruption_rate``) and pick the victim per event.
    """
    if not (math.isfinite(rate_per_hour) and rate_per_hour >= 0):
        raise ValueError(f"rate_per_hour must be finite and not negative, not {rate_per_hour}")
    if not (math.isfinite(duration_s) and duration_s >= 0 and notice_s >= 0):
        raise ValueError("duration_s and notice_s must be finite and not negative")
    rng = random.Random(f"fleetpilot-spot/{seed}")
    per_s = rate_per_hour / 3600.0
    times: list[float] = []
    if per_s == 0:
        return ()
    t = notice_s + rng.expovariate(per_s)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(per_s)
    return tuple(times)


def scale_trace(
    trace: Sequence[TraceRequest],
    *,
    time: float = 1.0,
    rate: float = 1.0,
    seed: int = 0,
    shift_s: float = 60.0,
) -> tuple[TraceRequest, ...]:
    """A request trace with arrivals multiplied by ``time`` and about ``rate`` times as many
    requests, sorted by arrival.

    ``rate < 1`` keeps each request with probability ``rate`` (a seeded subsample: a Poisson
    trace stays Poisson; a bursty one gets a little smoother, cv² -> rate·cv² + 1 - rate).
    ``rate > 1`` superposes shifted copies: the original, ``floor(rate) - 1`` whole copies and
    one copy thinned to the fractional part, each copy moved by its own seeded offset in
    ``[0, shift_s)`` (trace seconds, before time scaling) and wrapped around the end of the
    trace.  Copies keep the original's burst structure and daily shape; duplicating each
    request in place would instead turn every arrival into a burst.  Sizes are kept.
    """
    if not (math.isfinite(time) and time > 0):
        raise ValueError(f"time scale must be finite and positive, not {time}")
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate scale must be finite and not negative, not {rate}")
    if not (math.isfinite(shift_s) and shift_s >= 0):
        raise ValueError(f"shift_s must be finite and not negative, not {shift_s}")
    rng = random.Random(f"fleetpilot-scale/{seed}")
    span = max((r.arrival for r in trace), default=0.0)
    whole = math.floor(rate)
    fraction = rate - whole
    picked: list[tuple[float, int, TraceRequest]] = []
    for copy in range(whole + (1 if fraction > 0 else 0)):
        offset = rng.uniform(0.0, min(shift_s, span)) if copy > 0 else 0.0
        keep = 1.0 if copy < whole else fraction
        for r in trace:
            if keep < 1.0 and rng.random() >= keep:
                continue
            t = r.arrival + offset
            if t > span:
                t -= span
            picked.append((t, copy, r))
    picked.sort(key=lambda item: (item[0], item[1]))
    return tuple(
        TraceRequest(t * time, r.prompt_tokens, r.max_tokens, r.service_class, r.tenant)
        for t, _, r in picked
    )
