"""A deterministic virtual-time event loop: a heap of ``(time, seq, callback, args)``.

The simulator's engine, after SimPy's ``Environment`` without the processes: callbacks are
scheduled at absolute virtual times and run in time order; events at the same time run in
the order they were scheduled (``seq`` breaks the tie, so a run repeats exactly and no two
callbacks are ever compared).  Nothing here reads a clock.

    loop = EventLoop()
    loop.schedule(2.0, print, "two")
    loop.schedule(1.0, print, "one")
    loop.run()          # prints "one" then "two"; loop.now == 2.0
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

__all__ = ["EventLoop"]

_Entry = tuple[float, int, Callable[..., object], tuple[Any, ...]]


class EventLoop:
    """Virtual time starting at ``start``; ``now`` only moves forward."""

    __slots__ = ("_heap", "_seq", "now")

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[_Entry] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at: float, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` at virtual time ``at`` (not before ``now``)."""
        if at < self.now or math.isnan(at):
            raise ValueError(f"cannot schedule at {at!r}: now is {self.now!r}")
        heapq.heappush(self._heap, (at, next(self._seq), fn, args))

    def peek(self) -> float:
        """Time of the next event, ``inf`` when none is left."""
        return self._heap[0][0] if self._heap else math.inf

    def step(self) -> None:
        """Run the next event (callbacks may schedule more)."""
        at, _, fn, args = heapq.heappop(self._heap)
        self.now = at
        fn(*args)

    def run(self, until: float = math.inf) -> None:
        """Run every event due at or before ``until``; then ``now`` is ``until`` if finite."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            at, _, fn, args = pop(heap)
            self.now = at
            fn(*args)
        if until != math.inf and until > self.now:
            self.now = until
