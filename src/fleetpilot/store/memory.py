"""The Store in one process's memory: tests and the simulator (it honours a manual clock)."""

from __future__ import annotations

import copy
from typing import Any

from fleetpilot.clock import Clock, WallClock
from fleetpilot.store.base import Add, Added, Entry, Settle
from fleetpilot.store.counter import Counter, apply_all, settle_all

__all__ = ["MemoryStore"]


class MemoryStore:
    """Atomic because nothing here awaits: each call runs to its end on the event loop."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or WallClock()
        self._counters: dict[str, Counter] = {}
        self._logs: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self._log_ids: dict[str, set[str]] = {}
        self._kv: dict[str, tuple[bytes, int]] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    async def now(self) -> float:
        return self.clock.now()

    def _counter(self, key: str) -> Counter:
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = Counter()
        c.tidy(self.clock.now())
        return c

    async def add(self, *adds: Add) -> Added:
        counters = {a.key: self._counter(a.key) for a in adds}
        return apply_all(counters, adds, self.clock.now())

    async def commit(self, settles: tuple[Settle, ...], entry: Entry | None = None) -> bool:
        if entry is not None and entry.id in self._log_ids.get(entry.log, ()):
            return False
        counters = {s.key: self._counter(s.key) for s in settles}
        settle_all(counters, settles, self.clock.now())
        if entry is not None:
            self._append(entry.log, entry.id, entry.record)
        return True

    async def settle(self, key: str, hold: str, amount: float) -> float:
        await self.commit((Settle(key, hold, amount),))
        return await self.value(key)

    async def release(self, key: str, hold: str) -> float:
        return await self.settle(key, hold, 0.0)

    async def value(self, key: str) -> float:
        return self._counter(key).value()

    async def append(self, log: str, entry_id: str, record: dict[str, Any]) -> bool:
        return self._append(log, entry_id, record)

    def _append(self, log: str, entry_id: str, record: dict[str, Any]) -> bool:
        ids = self._log_ids.setdefault(log, set())
        if entry_id in ids:
            return False
        ids.add(entry_id)
        entries = self._logs.setdefault(log, [])
        entries.append((len(entries) + 1, entry_id, copy.deepcopy(record)))
        return True

    async def read(
        self, log: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, dict[str, Any]]]:
        entries = self._logs.get(log, [])
        return [(s, i, copy.deepcopy(r)) for s, i, r in entries[max(after, 0) : after + limit]]

    async def get(self, key: str) -> tuple[bytes | None, int]:
        value, version = self._kv.get(key, (None, 0))
        return value, version

    async def put(self, key: str, value: bytes, *, version: int) -> bool:
        if self._kv.get(key, (b"", 0))[1] != version:
            return False
        self._kv[key] = (bytes(value), version + 1)
        return True

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        now = self.clock.now()
        current = self._leases.get(name)
        if current is None or current[0] == holder or current[1] <= now:
            self._leases[name] = (holder, now + ttl_s)
            return True
        return False

    async def unlease(self, name: str, holder: str) -> None:
        current = self._leases.get(name)
        if current is not None and current[0] == holder:
            del self._leases[name]

    async def close(self) -> None:
        return None
