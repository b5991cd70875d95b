"""The actuator seam: how a :class:`~fleetpilot.core.capacity.Plan` becomes running replicas.

The controller decides (a ``Plan``, as data); an actuator carries it out and reports back what
is running.  One narrow protocol, three implementations: :mod:`.local` (emulator processes on
this machine), :mod:`.kubernetes` (one Deployment per pool) and :mod:`.dry_run` (prints the
plan).  Every actuator:

- ``apply(plan, pools)`` brings each listed pool's *active* replicas (starting or ready) to
  ``plan.targets[pool]``.  Pools the plan does not name keep their size.  It returns once the
  change is under way: replicas start and drain in the background.
- ``replicas()`` lists current members (starting, ready, draining) as frozen ``Replica`` values;
  this is what the gateway's membership is synced from.
- ``drain(replica_id)`` takes one replica out of service: it stops receiving new work at once,
  its in-flight work finishes (or a timeout passes), then it is removed.  Idempotent.
- ``notices()`` yields :class:`PreemptionNotice` events: a replica that will be taken away
  (a spot interruption notice).  The actuator has already marked it draining.
- ``close()`` releases everything it started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetpilot.core.capacity import Plan
from fleetpilot.core.model import Pool, Replica, ReplicaState

__all__ = ["ACTIVE", "Actuator", "NoticeBus", "PreemptionNotice", "active_counts"]

ACTIVE = (ReplicaState.STARTING, ReplicaState.READY)


@dataclass(frozen=True, slots=True)
class PreemptionNotice:
    """``replica_id`` of ``pool`` is gone at ``deadline`` (clock seconds); noticed at ``at``."""

    replica_id: str
    pool: str
    at: float
    deadline: float
    reason: str = "spot interruption"


class Actuator(Protocol):
    async def apply(self, plan: Plan, pools: Sequence[Pool]) -> None: ...

    async def replicas(self) -> list[Replica]: ...

    async def drain(self, replica_id: str) -> None: ...

    def notices(self) -> AsyncIterator[PreemptionNotice]: ...

    async def close(self) -> None: ...


class NoticeBus:
    """Fan-out of pre-emption notices: every ``subscribe()`` gets every later notice."""

    def __init__(self) -> None:
        self._subs: list[_Subscription] = []
        self.history: list[PreemptionNotice] = []

    def publish(self, notice: PreemptionNotice) -> None:
        self.history.append(notice)
        for sub in self._subs:
            sub.queue.put_nowait(notice)

    def close(self) -> None:
        for sub in self._subs:
            sub.queue.put_nowait(None)

    def subscribe(self) -> AsyncIterator[PreemptionNotice]:
        """Notices from now on (the subscription starts at this call, not at first ``await``)."""
        sub = _Subscription(self)
        self._subs.append(sub)
        return sub


class _Subscription:
    def __init__(self, bus: NoticeBus) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[PreemptionNotice | None] = asyncio.Queue()

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> PreemptionNotice:
        notice = await self.queue.get()
        if notice is None:
            if self in self.bus._subs:
                self.bus._subs.remove(self)
            raise StopAsyncIteration
        return notice


def active_counts(replicas: Sequence[Replica]) -> dict[str, int]:
    """Starting-or-ready replicas per pool (draining ones are on their way out)."""
    out: dict[str, int] = {}
    for r in replicas:
        if r.state in ACTIVE:
            out[r.pool] = out.get(r.pool, 0) + 1
    return out
