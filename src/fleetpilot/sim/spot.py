"""Spot maps played on a fleet: what each spot pool can hold per window, or when it is pre-empted.

A :class:`~fleetpilot.traces.spot.SpotMap` says which offering each trace describes (its
accelerator, one zone or the whole pool, and what a count means), so nothing here guesses:

* a spot pool whose accelerator has no trace keeps the catalogue's interruption rate at
  request level, and is not bounded at window level (the window simulator plays no rate);
* a whole-pool trace bounds the pool; per-zone traces bound each zone of a pool spread over
  ``offering.zones`` (a zone with no trace is not bounded); a zone past the pool's zones is
  an error;
* ``instances`` counts × ``replicas_per_instance`` are replicas; ``open`` (0/1) is no bound
  when 1 (the pool's quota) and nothing when 0;
* a run longer than a trace is an error unless its map says ``loop: true``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleetpilot.core.model import CapacityClass, Pool
from fleetpilot.core.series import SpotMarket
from fleetpilot.errors import ConfigError
from fleetpilot.sim.fluid import NO_LIMIT
from fleetpilot.traces.spot import SpotFeed, SpotMap

__all__ = ["WindowSpot", "counts_per_window", "request_preemptions", "window_spot"]


def _check_length(feed: SpotFeed, duration_s: float) -> None:
    if not feed.loop and duration_s > feed.market.duration_s + 1e-9:
        raise ConfigError(
            f"{feed.source}: the trace covers {feed.market.duration_s / 3600:.1f} h, the run "
            f"{duration_s / 3600:.1f} h: shorten the run or set loop: true in the spot map"
        )


def counts_per_window(
    market: SpotMarket, window_s: float, windows: int, *, loop: bool = False
) -> tuple[int, ...]:
    """The lowest count of the ticks each window overlaps (a window holds what survives all
    of it); past the trace's end an error, or with ``loop`` the trace again from its start."""
    counts = market.capacity
    n = len(counts)
    if not n:
        raise ValueError("an empty spot trace")
    if not loop and windows * window_s > market.duration_s + 1e-9:
        raise ValueError("the run is longer than the spot trace (loop it to repeat it)")
    out = []
    for w in range(windows):
        lo = math.floor(w * window_s / market.gap_s + 1e-9)
        hi = max(math.ceil((w + 1) * window_s / market.gap_s - 1e-9), lo + 1)
        if not loop:
            hi = min(hi, n)
        out.append(min(counts[i % n] for i in range(lo, hi)))
    return tuple(out)


def _replicas(feed: SpotFeed, pool: Pool, counts: Sequence[int]) -> list[int]:
    if feed.counts == "open":
        up = pool.offering.within_quota(NO_LIMIT)
        return [up if c > 0 else 0 for c in counts]
    return [c * feed.replicas_per_instance for c in counts]


def _feeds(spot: SpotMap, pool: Pool) -> list[SpotFeed]:
    return [f for f in spot.feeds if f.accelerator == pool.offering.accelerator]


def _spot_pools(pools: Sequence[Pool]) -> list[Pool]:
    return [p for p in pools if p.offering.capacity_class is CapacityClass.SPOT]


@dataclass(frozen=True, slots=True)
class WindowSpot:
    """What :func:`~fleetpilot.sim.fluid.simulate` takes: whole-pool and per-zone bounds."""

    available: dict[str, list[int]] = field(default_factory=dict)
    zones: dict[str, list[list[int]]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def window_spot(spot: SpotMap, pools: Sequence[Pool], window_s: float, windows: int) -> WindowSpot:
    """Per-window bounds of every spot pool the map describes (see the module)."""
    available: dict[str, list[int]] = {}
    zones: dict[str, list[list[int]]] = {}
    notes: list[str] = []
    for pool in _spot_pools(pools):
        feeds = _feeds(spot, pool)
        if not feeds:
            notes.append(f"{pool.name}: no spot trace, not bounded at window level")
            continue
        for feed in feeds:
            _check_length(feed, windows * window_s)
        n_zones = max(pool.offering.zones, 1)
        whole = [f for f in feeds if f.zone is None or (n_zones == 1 and f.zone == 0)]
        if whole:
            counts = counts_per_window(whole[0].market, window_s, windows, loop=whole[0].loop)
            available[pool.name] = _replicas(whole[0], pool, counts)
            notes.append(f"{pool.name}: whole pool from {whole[0].source}")
            continue
        series = [[NO_LIMIT] * windows for _ in range(n_zones)]
        for feed in feeds:
            assert feed.zone is not None
            if feed.zone >= n_zones:
                raise ConfigError(
                    f"{spot.source}: {feed.source} is zone {feed.zone} of "
                    f"{pool.offering.accelerator}, whose pool {pool.name} spreads over "
                    f"{n_zones} zone(s) (0-{n_zones - 1})"
                )
            counts = counts_per_window(feed.market, window_s, windows, loop=feed.loop)
            series[feed.zone] = _replicas(feed, pool, counts)
        zones[pool.name] = series
        named = sorted(f.zone for f in feeds if f.zone is not None)
        notes.append(f"{pool.name}: zones {named} of {n_zones} from traces")
    return WindowSpot(available, zones, tuple(notes))


def request_preemptions(
    spot: SpotMap, pools: Sequence[Pool], duration_s: float, *, notice_s: float
) -> tuple[dict[str, list[float] | Literal["rate"]], tuple[str, ...]]:
    """Per spot pool, the times of its pre-emption notices (``notice_s`` before each loss a
    trace shows: a drop of ``k`` instances is ``k × replicas_per_instance`` replicas; an
    ``open`` trace closing takes one), or ``"rate"`` for a pool the map does not describe."""
    out: dict[str, list[float] | Literal["rate"]] = {}
    notes: list[str] = []
    for pool in _spot_pools(pools):
        feeds = _feeds(spot, pool)
        if not feeds:
            out[pool.name] = "rate"
            notes.append(f"{pool.name}: no spot trace, the catalogue's interruption rate")
            continue
        times: list[float] = []
        for feed in feeds:
            _check_length(feed, duration_s)
            per = 1 if feed.counts == "open" else feed.replicas_per_instance
            losses = [t for t in feed.market.preemptions() for _ in range(per)]
            span = feed.market.duration_s
            laps = math.ceil(duration_s / span) if feed.loop and span > 0 else 1
            times.extend(t + k * span for k in range(laps) for t in losses)
        out[pool.name] = sorted(max(t - notice_s, 0.0) for t in times if t < duration_s)
        notes.append(f"{pool.name}: {len(out[pool.name])} pre-emptions from {len(feeds)} trace(s)")
    return out, tuple(notes)
