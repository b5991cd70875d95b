"""One active controller at a time: a lease that the acting controller renews every step.

``acquire()`` takes the lease if it is free or expired and renews it if this holder has it;
it answers whether this holder holds it now.  A controller acts only on True.  A holder that
stops renewing (crashed, partitioned) loses the lease ``ttl_s`` later and another takes over.

Backends:

- :class:`InProcessLease` (the default): controllers in one process share a
  :class:`LeaseTable`; with no table given a controller is alone and always holds it.
- :class:`StoreLease`: the lease on the shared Store (:mod:`fleetpilot.store`), timed by the
  store's clock; :class:`RedisLease` is it on Redis.

``ttl_s`` is in the controller's clock units (modelled seconds on a scaled clock); Redis gets
the matching real milliseconds.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetpilot.clock import Clock
from fleetpilot.store.base import Store

__all__ = [
    "InProcessLease",
    "Lease",
    "LeaseTable",
    "RedisLease",
    "StoreLease",
    "default_holder",
]

DEFAULT_KEY = "fleetpilot/controller"


def default_holder() -> str:
    """A name unique to this process and object: host/pid/random."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class Lease(Protocol):
    holder: str

    async def acquire(self) -> bool:
        """Take or renew the lease; True while this holder has it."""
        ...

    async def release(self) -> None: ...


@dataclass
class LeaseTable:
    """Shared state of in-process leases: key -> (holder, expiry)."""

    entries: dict[str, tuple[str, float]] = field(default_factory=dict)

    def holder(self, key: str = DEFAULT_KEY) -> str | None:
        entry = self.entries.get(key)
        return entry[0] if entry else None


class InProcessLease:
    def __init__(
        self,
        clock: Clock,
        *,
        table: LeaseTable | None = None,
        key: str = DEFAULT_KEY,
        holder: str | None = None,
        ttl_s: float = 30.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("lease ttl_s must be positive")
        self.clock = clock
        self.table = table if table is not None else LeaseTable()
        self.key = key
        self.holder = holder or default_holder()
        self.ttl_s = ttl_s

    async def acquire(self) -> bool:
        now = self.clock.now()
        entry = self.table.entries.get(self.key)
        if entry is None or entry[0] == self.holder or entry[1] <= now:
            self.table.entries[self.key] = (self.holder, now + self.ttl_s)
            return True
        return False

    async def release(self) -> None:
        entry = self.table.entries.get(self.key)
        if entry is not None and entry[0] == self.holder:
            del self.table.entries[self.key]


class StoreLease:
    """The lease held on a shared :class:`~fleetpilot.store.base.Store` (SQLite for one
    machine, Redis for many), timed by the store's own clock: the lease rule is the store's
    (:meth:`~fleetpilot.store.base.Store.lease`), written once per backend."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        key: str = DEFAULT_KEY,
        holder: str | None = None,
        ttl_s: float = 30.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("lease ttl_s must be positive")
        self.store = store
        self.clock = clock
        self.key = key
        self.holder = holder or default_holder()
        self.ttl_s = ttl_s

    async def acquire(self) -> bool:
        # the store keeps real seconds; ttl_s is in the controller's (maybe modelled) ones
        return await self.store.lease(self.key, self.holder, self.clock.real_seconds(self.ttl_s))

    async def release(self) -> None:
        await self.store.unlease(self.key, self.holder)

    async def close(self) -> None:
        await self.store.close()


class RedisLease(StoreLease):
    """A :class:`StoreLease` on Redis: taking it is a ``SET … PX`` only if it is free or
    ours, giving it back a compare-and-``DEL``, so a holder never extends or deletes a lease
    that expired and passed to someone else."""

    @classmethod
    def from_url(cls, url: str, clock: Clock, **kwargs: Any) -> RedisLease:
        """``redis://host:port/db``."""
        from fleetpilot.store.redis import RedisStore

        return cls(RedisStore(url), clock, **kwargs)
