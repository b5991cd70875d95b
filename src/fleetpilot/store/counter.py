"""The counter rule, once, for the backends that run Python (memory, SQLite): a base amount,
named holds that expire, and an optional window — fixed (back to 0 ``window_s`` after its
first add) or sliding.

A sliding window keeps :data:`SLICES` aligned slices of ``window_s / SLICES`` on the store's
clock and counts every slice that overlaps the last ``window_s``: never more than the limit
in any window of that length, and at most one slice's time (1/60 of it) short of the limit
under a steady overload.  The two-bucket estimate (the previous bucket weighted by how much
of it is still covered) admits up to twice the limit in a minute when a burst fills the end
of one bucket, so it is not used.  Redis runs the same rule in Lua
(:mod:`fleetpilot.store.redis`); the contract tests hold the three to one behaviour."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fleetpilot.store.base import Add, Added, Settle

__all__ = ["SLICES", "Counter", "apply_all", "settle_all"]

SLICES = 60  # a sliding window's slices


@dataclass(slots=True)
class Counter:
    base: float = 0.0
    window_end: float | None = None  # a fixed window's end
    holds: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (amount, expiry)
    slide: float | None = None  # a sliding window's length
    slices: dict[int, float] = field(default_factory=dict)  # its slices by index

    def tidy(self, now: float) -> None:
        """Start a finished window again, roll a sliding one on, drop expired holds."""
        if self.window_end is not None and now >= self.window_end:
            self.base, self.window_end, self.holds = 0.0, None, {}
        if self.slide is not None:
            oldest = self._slice(now) - SLICES
            for i in [i for i in self.slices if i < oldest]:
                del self.slices[i]
        for name in [h for h, (_, expiry) in self.holds.items() if expiry <= now]:
            del self.holds[name]

    def _slice(self, now: float) -> int:
        assert self.slide is not None
        return math.floor(now * SLICES / self.slide)

    def value(self) -> float:
        held = sum(amount for amount, _ in self.holds.values())
        return self.base + held + sum(self.slices.values())

    def resets_in(self, now: float) -> float | None:
        """Seconds until the window starts again (fixed) or its oldest slice leaves it."""
        if self.slide is not None:
            if not self.slices:
                return 0.0
            width = self.slide / SLICES
            return max(0.0, (min(self.slices) + SLICES + 1) * width - now)
        return None if self.window_end is None else max(0.0, self.window_end - now)

    def _count(self, amount: float, now: float) -> None:
        if self.slide is None:
            self.base += amount
        else:
            i = self._slice(now)
            self.slices[i] = self.slices.get(i, 0.0) + amount

    def apply(self, add: Add, now: float) -> None:
        if add.sliding and self.slide is None:
            self.slide = add.window_s
        if add.hold is not None and add.hold_ttl_s is not None:
            previous = self.holds.get(add.hold, (0.0, 0.0))[0]
            self.holds[add.hold] = (previous + add.amount, now + add.hold_ttl_s)
        else:
            self._count(add.amount, now)
        if add.window_s is not None and not add.sliding and self.window_end is None:
            self.window_end = now + add.window_s

    def settle(self, hold: str, amount: float, now: float) -> None:
        self.holds.pop(hold, None)
        self._count(amount, now)


def apply_all(counters: dict[str, Counter], adds: tuple[Add, ...], now: float) -> Added:
    """All of ``adds`` onto ``counters`` (tidied, one per key), or none of them."""
    for c in counters.values():
        c.tidy(now)
    pending: dict[str, float] = {}
    for i, add in enumerate(adds):
        after = counters[add.key].value() + pending.get(add.key, 0.0) + add.amount
        if add.limit is not None and add.amount > 0 and after > add.limit + 1e-9:
            return Added(
                False,
                tuple(counters[a.key].value() for a in adds),
                tuple(counters[a.key].resets_in(now) for a in adds),
                refused=i,
            )
        pending[add.key] = pending.get(add.key, 0.0) + add.amount
    for add in adds:
        counters[add.key].apply(add, now)
    return Added(
        True,
        tuple(counters[a.key].value() for a in adds),
        tuple(counters[a.key].resets_in(now) for a in adds),
    )


def settle_all(
    counters: dict[str, Counter], settles: tuple[Settle, ...], now: float
) -> tuple[float, ...]:
    """Each of ``settles`` onto ``counters`` (tidied, one per key); each counter after."""
    for c in counters.values():
        c.tidy(now)
    for s in settles:
        counters[s.key].settle(s.hold, s.amount, now)
    return tuple(counters[s.key].value() for s in settles)
