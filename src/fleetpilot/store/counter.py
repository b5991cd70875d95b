"""The counter rule, once, for the backends that run Python (memory, SQLite): a base amount,
named holds that expire, and an optional window — fixed (back to 0 ``window_s`` after its
first add) or sliding (aligned buckets of ``window_s`` on the store's clock, the previous
bucket counted in proportion to how much of it the sliding window still covers).  Redis
runs the same rule in Lua (:mod:`fleetpilot.store.redis`); the contract tests hold the
three to one behaviour."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fleetpilot.store.base import Add, Added, Settle

__all__ = ["Counter", "apply_all", "settle_all"]


@dataclass(slots=True)
class Counter:
    base: float = 0.0
    window_end: float | None = None  # a fixed window's end
    holds: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (amount, expiry)
    prev: float = 0.0  # a sliding window's previous bucket
    start: float | None = None  # a sliding window's current bucket start
    slide: float | None = None  # a sliding window's length

    def tidy(self, now: float) -> None:
        """Start a finished window again, roll a sliding one on, drop expired holds."""
        if self.window_end is not None and now >= self.window_end:
            self.base, self.window_end, self.holds = 0.0, None, {}
        if self.slide is not None and self.start is not None and now >= self.start + self.slide:
            passed = math.floor((now - self.start) / self.slide)
            self.prev = self.base if passed == 1 else 0.0
            self.base = 0.0
            self.start += passed * self.slide
        for name in [h for h, (_, expiry) in self.holds.items() if expiry <= now]:
            del self.holds[name]

    def value(self, now: float) -> float:
        v = self.base + sum(amount for amount, _ in self.holds.values())
        if self.slide is not None and self.start is not None and self.prev:
            v += self.prev * max(0.0, 1.0 - (now - self.start) / self.slide)
        return v

    def resets_in(self, now: float) -> float | None:
        if self.slide is not None and self.start is not None:
            return max(0.0, self.start + self.slide - now)
        return None if self.window_end is None else max(0.0, self.window_end - now)

    def apply(self, add: Add, now: float) -> None:
        if add.hold is not None and add.hold_ttl_s is not None:
            previous = self.holds.get(add.hold, (0.0, 0.0))[0]
            self.holds[add.hold] = (previous + add.amount, now + add.hold_ttl_s)
        else:
            self.base += add.amount
        if add.window_s is not None:
            if add.sliding and self.start is None:
                self.slide = add.window_s
                self.start = math.floor(now / add.window_s) * add.window_s
            elif not add.sliding and self.window_end is None:
                self.window_end = now + add.window_s

    def settle(self, hold: str, amount: float) -> None:
        self.holds.pop(hold, None)
        self.base += amount


def apply_all(counters: dict[str, Counter], adds: tuple[Add, ...], now: float) -> Added:
    """All of ``adds`` onto ``counters`` (tidied, one per key), or none of them."""
    for c in counters.values():
        c.tidy(now)
    pending: dict[str, float] = {}
    for i, add in enumerate(adds):
        after = counters[add.key].value(now) + pending.get(add.key, 0.0) + add.amount
        if add.limit is not None and add.amount > 0 and after > add.limit + 1e-9:
            return Added(
                False,
                tuple(counters[a.key].value(now) for a in adds),
                tuple(counters[a.key].resets_in(now) for a in adds),
                refused=i,
            )
        pending[add.key] = pending.get(add.key, 0.0) + add.amount
    for add in adds:
        counters[add.key].apply(add, now)
    return Added(
        True,
        tuple(counters[a.key].value(now) for a in adds),
        tuple(counters[a.key].resets_in(now) for a in adds),
    )


def settle_all(
    counters: dict[str, Counter], settles: tuple[Settle, ...], now: float
) -> tuple[float, ...]:
    """Each of ``settles`` onto ``counters`` (tidied, one per key); each counter after."""
    for c in counters.values():
        c.tidy(now)
    for s in settles:
        counters[s.key].settle(s.hold, s.amount)
    return tuple(counters[s.key].value(now) for s in settles)
