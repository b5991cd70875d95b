"""The counter rule, once, for the backends that run Python (memory, SQLite): a base amount,
named holds that expire, and an optional fixed window.  Redis runs the same rule in Lua
(:mod:`fleetpilot.store.redis`); the contract tests hold the three to one behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetpilot.store.base import Add, Added

__all__ = ["Counter", "apply_all"]


@dataclass(slots=True)
class Counter:
    base: float = 0.0
    window_end: float | None = None
    holds: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (amount, expiry)

    def tidy(self, now: float) -> None:
        """Start a finished window again and drop expired holds."""
        if self.window_end is not None and now >= self.window_end:
            self.base, self.window_end, self.holds = 0.0, None, {}
        for name in [h for h, (_, expiry) in self.holds.items() if expiry <= now]:
            del self.holds[name]

    @property
    def value(self) -> float:
        return self.base + sum(amount for amount, _ in self.holds.values())

    def resets_in(self, now: float) -> float | None:
        return None if self.window_end is None else max(0.0, self.window_end - now)

    def apply(self, add: Add, now: float) -> None:
        if add.hold is not None and add.hold_ttl_s is not None:
            previous = self.holds.get(add.hold, (0.0, 0.0))[0]
            self.holds[add.hold] = (previous + add.amount, now + add.hold_ttl_s)
        else:
            self.base += add.amount
        if add.window_s is not None and self.window_end is None:
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
        after = counters[add.key].value + pending.get(add.key, 0.0) + add.amount
        if add.limit is not None and add.amount > 0 and after > add.limit + 1e-9:
            return Added(
                False,
                tuple(counters[a.key].value for a in adds),
                tuple(counters[a.key].resets_in(now) for a in adds),
                refused=i,
            )
        pending[add.key] = pending.get(add.key, 0.0) + add.amount
    for add in adds:
        counters[add.key].apply(add, now)
    return Added(
        True,
        tuple(counters[a.key].value for a in adds),
        tuple(counters[a.key].resets_in(now) for a in adds),
    )
