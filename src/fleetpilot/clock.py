"""The one place that reads the wall clock; everything else gets a clock passed in.

``Clock.now()`` is monotonic seconds (deadlines, latencies); engines that need to wait use
``Clock.sleep``.  :class:`ManualClock` is the test and simulation double: time moves only
when told, and sleepers wake in order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class ManualClock:
    """A clock for tests: ``advance(dt)`` moves time and wakes sleepers whose time has come."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        self._sleepers.append((self._now + max(seconds, 0.0), self._seq, fut))
        self._sleepers.sort(key=lambda s: (s[0], s[1]))
        await fut

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = self._sleepers.pop(0)
            if not fut.done():
                fut.set_result(None)
