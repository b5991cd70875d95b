"""One active controller at a time: a lease that the acting controller renews every step.

``acquire()`` takes the lease if it is free or expired and renews it if this holder has it;
it answers whether this holder holds it now.  A controller acts only on True.  A holder that
stops renewing (crashed, partitioned) loses the lease ``ttl_s`` later and another takes over.

Two backends:

- :class:`InProcessLease` (the default): controllers in one process share a
  :class:`LeaseTable`; with no table given a controller is alone and always holds it.
- :class:`RedisLease`: ``SET key holder NX PX ttl`` to take it; renewal is a Lua
  compare-and-``PEXPIRE`` and release a compare-and-``DEL``, so a holder never extends or
  deletes a lease that expired and passed to someone else.  Needs the ``redis`` package.

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

__all__ = ["InProcessLease", "Lease", "LeaseTable", "RedisLease", "default_holder"]

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


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLease:
    """A lease in Redis; ``client`` is a ``redis.asyncio.Redis`` (decode_responses either way)."""

    def __init__(
        self,
        client: Any,
        clock: Clock,
        *,
        key: str = DEFAULT_KEY,
        holder: str | None = None,
        ttl_s: float = 30.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("lease ttl_s must be positive")
        self.client = client
        self.clock = clock
        self.key = key
        self.holder = holder or default_holder()
        self.ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, clock: Clock, **kwargs: Any) -> RedisLease:
        """Connect with ``redis.asyncio.from_url`` (``redis://host:port/db``)."""
        import redis.asyncio

        return cls(redis.asyncio.from_url(url), clock, **kwargs)

    def _ttl_ms(self) -> int:
        return max(1, round(self.clock.real_seconds(self.ttl_s) * 1000))

    async def acquire(self) -> bool:
        ms = self._ttl_ms()
        if await self.client.set(self.key, self.holder, nx=True, px=ms):
            return True
        return bool(await self.client.eval(_RENEW, 1, self.key, self.holder, ms))

    async def release(self) -> None:
        await self.client.eval(_RELEASE, 1, self.key, self.holder)

    async def close(self) -> None:
        await self.client.aclose()
