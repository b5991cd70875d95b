"""How bursty arrivals are, measured where they arrive and learnt where capacity is planned.

A window's mean rate hides what the SLO feels: requests that come in clumps of dozens within
seconds wait behind each other however many replicas the mean needs.  Two pieces, one of each:

* :class:`BurstMeter` counts arrivals in buckets of ``BUCKET_S`` (2 s, the TTFT target's
  timescale) and files each closed bucket's count under its rate in a fixed log-spaced
  histogram (:data:`EDGES`), request-weighted and cumulative, so that a gateway can export it
  as a Prometheus histogram and a reader can difference two readings.  The request-level
  simulator runs the same meter over the trace it replays.
* :func:`burst_rps` reads a histogram (or the difference of two) as a rate: the bucket rate
  at or below which a ``q`` share of the requests arrived.  :func:`excess` compares it with
  what Poisson arrivals at the same mean would show in the same buckets, so that ordinary
  randomness, which the planner's utilisation already absorbs, counts 1.
* :class:`BurstState` / :func:`learn` keep an exponentially decayed, request-weighted
  histogram of that excess over control intervals (bounded memory: one count per bin), and
  :func:`learnt_excess` reads a high quantile of it: what the adaptive planner multiplies its
  planned demand by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BUCKET_S",
    "EDGES",
    "EXCESS_EDGES",
    "BurstMeter",
    "BurstState",
    "burst_rps",
    "excess",
    "learn",
    "learnt_excess",
    "poisson_burst",
]

BUCKET_S = 2.0
# bucket rates (requests/s) are filed under these upper edges, 25% apart, from 0.5 to ~20,000
EDGES: tuple[float, ...] = tuple(0.5 * 1.25**i for i in range(48))
# learnt excess burstiness, 10% apart from 1 to ~110
EXCESS_EDGES: tuple[float, ...] = tuple(1.1**i for i in range(50))


def _bin(edges: Sequence[float], x: float) -> int:
    """The first edge at or above ``x`` (the last for anything larger)."""
    lo, hi = 0, len(edges) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if edges[mid] >= x:
            hi = mid
        else:
            lo = mid + 1
    return lo


class BurstMeter:
    """Arrivals per ``BUCKET_S`` bucket, filed by rate (request-weighted, cumulative).

    ``add(t)`` is called with each arrival's time (non-decreasing); a bucket is filed once a
    later arrival, or :meth:`flush`, shows it closed.  Buckets with no arrival file nothing:
    they hold no request to weigh."""

    __slots__ = ("_bucket", "_count", "counts")

    def __init__(self) -> None:
        self.counts = [0] * len(EDGES)  # requests that arrived in a bucket of that rate
        self._bucket = -1
        self._count = 0

    def add(self, t: float) -> None:
        b = math.floor(t / BUCKET_S)
        if b != self._bucket:
            self._file()
            self._bucket = b
        self._count += 1

    def flush(self, now: float) -> None:
        """File the open bucket if ``now`` is past it."""
        if self._count and math.floor(now / BUCKET_S) > self._bucket:
            self._file()

    def _file(self) -> None:
        if self._count:
            self.counts[_bin(EDGES, self._count / BUCKET_S)] += self._count
        self._count = 0


def burst_rps(counts: Sequence[float], q: float = 0.99) -> float | None:
    """The bucket rate at or below which a ``q`` share of the requests in ``counts`` (a
    histogram over :data:`EDGES`) arrived; None when it holds none."""
    total = sum(counts)
    if total <= 0:
        return None
    seen = 0.0
    for edge, c in zip(EDGES, counts, strict=False):
        seen += c
        if seen >= q * total - 1e-9:
            return edge
    return EDGES[-1]


def poisson_burst(rps: float, q: float = 0.99) -> float:
    """:func:`burst_rps` of Poisson arrivals at ``rps``: the request-weighted ``q`` quantile
    of a bucket's count (a bucket holding ``k`` requests weighs ``k``; that size-biased count
    is 1 + Poisson(λ)), as a rate, rounded up to an edge as the meter files it."""
    lam = rps * BUCKET_S
    if lam <= 0:
        return EDGES[0]
    # P(K* = k) = P(Poisson = k - 1): walk the Poisson CDF until it reaches q
    k, p, cdf = 0, math.exp(-lam), 0.0
    if p == 0.0:  # large λ: normal approximation
        k = max(round(lam + 2.326 * math.sqrt(lam)), 0)
    else:
        while True:
            cdf += p
            if cdf >= q:
                break
            k += 1
            p *= lam / k
    return EDGES[_bin(EDGES, (k + 1) / BUCKET_S)]


def excess(counts: Sequence[float], rps: float, q: float = 0.99) -> float | None:
    """How much burstier than Poisson the arrivals in ``counts`` were (≥ 1), at mean ``rps``."""
    got = burst_rps(counts, q)
    if got is None or rps <= 0:
        return None
    return max(got / poisson_burst(rps, q), 1.0)


@dataclass(frozen=True, slots=True)
class BurstState:
    """Decayed, request-weighted counts of the excess per control interval, by
    :data:`EXCESS_EDGES` bin, as of ``at``."""

    weights: tuple[float, ...] = (0.0,) * len(EXCESS_EDGES)
    at: float | None = None


def learn(
    state: BurstState, now: float, value: float, requests: float, half_life_s: float
) -> BurstState:
    """``state`` decayed to ``now`` with one interval's ``value`` added, weighing ``requests``."""
    decay = 1.0
    if state.at is not None and half_life_s > 0 and now > state.at:
        decay = 0.5 ** ((now - state.at) / half_life_s)
    weights = [w * decay for w in state.weights]
    weights[_bin(EXCESS_EDGES, value)] += max(requests, 0.0)
    return BurstState(tuple(weights), now)


def learnt_excess(state: BurstState, q: float) -> float:
    """The ``q`` quantile of the learnt excess (request-weighted; 1 with nothing learnt)."""
    total = sum(state.weights)
    if total <= 0:
        return 1.0
    seen = 0.0
    for edge, w in zip(EXCESS_EDGES, state.weights, strict=True):
        seen += w
        if seen >= q * total - 1e-12:
            return edge
    return EXCESS_EDGES[-1]
