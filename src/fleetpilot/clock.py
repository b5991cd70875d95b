"""The one place that reads the wall clock; everything else gets a clock passed in.

``Clock.now()`` is monotonic seconds (deadlines, latencies); engines that need to wait use
``Clock.sleep``.  :class:`ManualClock` is the test and simulation double: time moves only
when told, and sleepers wake in order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "WallClock"]


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def real_seconds(self, seconds: float) -> float:
        """Wall-clock seconds that ``seconds`` of this clock take (for socket timeouts)."""
        ...


class SystemClock:
    """Wall-clock time; with ``scale`` < 1 it runs in *modelled* time for compressed fleets.

    An emulated fleet started with ``--time-scale 0.1`` does ten modelled seconds of work per
    real second; a gateway in front of it uses ``SystemClock(0.1)`` so that its latency
    predictions, deadlines and metrics are all in the same modelled seconds.
    """

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("clock scale must be positive")
        self.scale = scale

    def now(self) -> float:
        return time.monotonic() / self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) * self.scale)

    def real_seconds(self, seconds: float) -> float:
        return seconds * self.scale


class WallClock(SystemClock):
    """Seconds since the epoch: a clock that processes sharing one file (the SQLite store)
    agree on, unlike one process's monotonic origin where machines differ."""

    def now(self) -> float:
        return time.time() / self.scale


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

    def real_seconds(self, seconds: float) -> float:
        return seconds

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = self._sleepers.pop(0)
            if not fut.done():
                fut.set_result(None)
