"""The one seam for state that several gateway (and controller) processes share.

A handful of primitives, each atomic on every backend — Redis does each in one round trip
(a Lua script), SQLite in one transaction, memory under the event loop — because budgets,
rate limits, the spend ledger and the leader lease are all small rules on top of them:

- **counters with holds**: :meth:`Store.add` adds to one or more counters *all or nothing*,
  each refused if it would pass its ``limit`` (request limit + token limit + budget in one
  call).  A counter may be a fixed window (it starts again at 0 ``window_s`` after its first
  add) or a sliding one (``sliding``: the last ``window_s``, estimated from two aligned
  buckets, so a limit per minute holds across a bucket's edge), and an amount may be a named
  *hold* that expires ``hold_ttl_s`` later unless :meth:`~Store.commit` (or
  :meth:`~Store.settle`) replaces it with the actual amount or :meth:`~Store.release` drops
  it, so a crashed gateway's reservations come back by themselves;
- **logs**: :meth:`~Store.append` adds a record under an id, at most once per id (a retried
  append never counts twice); :meth:`~Store.read` pages through in order.
  :meth:`~Store.commit` settles holds *and* appends the record that says so in one atomic
  step, once per id: a spend ledger entry and the budget it is charged to can never
  disagree, whatever kills a gateway between the two;
- **compare-and-set**: :meth:`~Store.get` returns a value with its version, :meth:`~Store.put`
  writes only over the version read;
- **leases**: :meth:`~Store.lease` takes or renews a named lease for a holder,
  :meth:`~Store.unlease` gives it back; only the holder can renew or give it back.

Windows and expiries are measured on the Store's own clock (Redis ``TIME`` inside its
scripts; the machine's wall clock for SQLite; the injected clock for memory), never on one
process's monotonic clock, so gateways agree on when a window ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Add", "Added", "Entry", "Settle", "Store", "StoreUnavailable"]


class StoreUnavailable(ConnectionError):
    """The backend could not be reached; callers decide to fail open or closed."""


@dataclass(frozen=True, slots=True)
class Add:
    """One conditional add of ``amount`` onto the counter ``key``."""

    key: str
    amount: float
    limit: float | None = None  # refused if the counter would pass it
    window_s: float | None = None  # a fixed window: back to 0 this long after its first add
    sliding: bool = False  # window_s is a sliding window instead
    hold: str | None = None  # the amount is a hold under this name, expiring...
    hold_ttl_s: float | None = None  # ...this long after it is taken

    def __post_init__(self) -> None:
        if (self.hold is None) != (self.hold_ttl_s is None):
            raise ValueError("a hold needs both a name and hold_ttl_s")
        if self.hold_ttl_s is not None and self.hold_ttl_s <= 0:
            raise ValueError("hold_ttl_s must be positive")
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError("window_s must be positive")
        if self.sliding and self.window_s is None:
            raise ValueError("a sliding window needs window_s")


@dataclass(frozen=True, slots=True)
class Settle:
    """Drop ``hold`` from counter ``key`` (if it is still there) and add ``amount``."""

    key: str
    hold: str
    amount: float = 0.0


@dataclass(frozen=True, slots=True)
class Entry:
    """A record for ``log`` under ``id`` (kept once per id)."""

    log: str
    id: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Added:
    """What :meth:`Store.add` did: all applied (``ok``) or none, and where each stands."""

    ok: bool
    values: tuple[float, ...]  # each counter after the call (as before it, when refused)
    resets_in: tuple[float | None, ...]  # seconds until each window starts again
    refused: int | None = None  # the index of the first add that would pass its limit


class Store(Protocol):
    async def now(self) -> float:
        """The store's clock, in seconds."""
        ...

    async def add(self, *adds: Add) -> Added: ...

    async def settle(self, key: str, hold: str, amount: float) -> float:
        """Drop ``hold`` (if it is still there) and add ``amount``, unconditionally: what
        was really spent counts even when its hold expired.  Returns the counter."""
        ...

    async def commit(self, settles: tuple[Settle, ...], entry: Entry | None = None) -> bool:
        """Apply ``settles`` and append ``entry`` in one atomic step — unless ``entry.id`` is
        already in its log, when nothing is done and False comes back (a retried commit
        never settles twice)."""
        ...

    async def release(self, key: str, hold: str) -> float:
        """Drop ``hold`` (a settle of nothing); returns the counter."""
        ...

    async def value(self, key: str) -> float: ...

    async def append(self, log: str, entry_id: str, record: dict[str, Any]) -> bool:
        """Add ``record`` to ``log`` unless ``entry_id`` is there already (then False)."""
        ...

    async def read(
        self, log: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """Records after sequence number ``after``, oldest first: (seq, id, record)."""
        ...

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """A value and its version (``None, 0`` when absent)."""
        ...

    async def put(self, key: str, value: bytes, *, version: int) -> bool:
        """Write ``value`` if the key is still at ``version`` (0: absent); True if written."""
        ...

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take ``name`` if it is free or expired, or renew it if ``holder`` has it."""
        ...

    async def unlease(self, name: str, holder: str) -> None: ...

    async def close(self) -> None: ...
