"""One contract suite for the Store seam, run unchanged against memory, SQLite and a real
redis-server: every backend must give the same answers."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from fleetpilot.clock import ManualClock
from fleetpilot.errors import ConfigError
from fleetpilot.store import Add, Entry, MemoryStore, Settle, Store, StoreUnavailable, open_store
from fleetpilot.store.sqlite import SqliteStore

from conftest import free_port, redis_server


@dataclass
class Backend:
    store: Store
    advance: Callable[[float], Awaitable[None]]  # let this much of the store's time pass


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = ManualClock(1000.0)

        async def tick(dt: float) -> None:
            clock.advance(dt)

        store: Store = MemoryStore(clock)
        yield Backend(store, tick)
        await store.close()
        return

    async def sleep(dt: float) -> None:
        await asyncio.sleep(dt)

    if request.param == "sqlite":
        store = open_store(f"sqlite://{tmp_path}/store.db")
        yield Backend(store, sleep)
        await store.close()
        return
    async with redis_server(tmp_path) as url:
        store = open_store(url)
        yield Backend(store, sleep)
        await store.close()


async def test_conditional_add_stops_at_its_limit(backend: Backend) -> None:
    s = backend.store
    results = [await s.add(Add("rpm", 1, limit=3)) for _ in range(5)]
    assert [r.ok for r in results] == [True, True, True, False, False]
    assert results[2].values == (3.0,) and results[3].values == (3.0,)
    assert results[3].refused == 0
    assert await s.value("rpm") == 3.0
    assert (await s.add(Add("rpm", -1, limit=3))).ok  # giving back is never refused
    assert (await s.add(Add("rpm", 0.5, limit=3))).values == (2.5,)


async def test_multi_add_is_all_or_nothing(backend: Backend) -> None:
    s = backend.store
    assert (await s.add(Add("req", 1, limit=10), Add("tok", 900, limit=1000))).ok
    refused = await s.add(Add("req", 1, limit=10), Add("tok", 200, limit=1000), Add("b", 1))
    assert not refused.ok and refused.refused == 1
    assert refused.values == (1.0, 900.0, 0.0)
    assert (await s.value("req"), await s.value("tok"), await s.value("b")) == (1.0, 900.0, 0.0)
    # two adds on one counter in one call count together against its limit
    assert not (await s.add(Add("tok", 60, limit=1000), Add("tok", 60, limit=1000))).ok
    assert (await s.add(Add("tok", 50, limit=1000), Add("tok", 50, limit=1000))).ok
    assert await s.value("tok") == 1000.0


async def test_a_window_starts_again_when_it_ends(backend: Backend) -> None:
    s = backend.store
    first = await s.add(Add("w", 2, limit=2, window_s=0.4))
    assert first.ok and first.resets_in[0] is not None and 0 < first.resets_in[0] <= 0.401
    assert not (await s.add(Add("w", 1, limit=2, window_s=0.4))).ok
    await backend.advance(0.5)
    again = await s.add(Add("w", 1, limit=2, window_s=0.4))
    assert again.ok and again.values == (1.0,)


async def test_a_sliding_window_never_passes_its_limit_in_any_window(backend: Backend) -> None:
    s = backend.store

    def rate(n: float) -> Add:
        return Add("rpm", n, limit=4, window_s=1.0, sliding=True)

    first = await s.add(rate(3))
    assert first.ok and first.resets_in[0] is not None and 0.98 < first.resets_in[0] <= 1.04
    await backend.advance(0.6)
    assert (await s.add(rate(1))).ok
    # the first 3 have left the last second, the 4th has not: 3 more fit, not 4 (a fixed
    # window that began at the first add would start again here and take 4)
    await backend.advance(0.45)
    assert not (await s.add(rate(4))).ok
    late = await s.add(rate(3))
    assert late.ok and late.values == (4.0,)
    assert not (await s.add(rate(1))).ok
    await backend.advance(1.1)  # everything has left the window
    assert await s.value("rpm") == 0.0
    held = await s.add(Add("rpm", 4, limit=4, window_s=1.0, sliding=True, hold="r", hold_ttl_s=5))
    assert held.ok
    assert await s.settle("rpm", "r", 1.0) == 1.0  # a hold settles into the current slice
    # a hold keeps the counter alive while its slices age out over several windows
    assert (
        await s.add(Add("rpm", 2, limit=4, window_s=1.0, sliding=True, hold="q", hold_ttl_s=9))
    ).ok
    assert (await s.add(rate(1))).ok
    await backend.advance(2.5)
    assert await s.value("rpm") == 2.0  # the slices left, the hold stays
    assert (await s.add(rate(2))).ok and not (await s.add(rate(1))).ok
    await backend.advance(1.1)
    assert await s.value("rpm") == 2.0


async def test_commit_settles_and_records_once(backend: Backend) -> None:
    s = backend.store
    hold = dict(hold="req-1", hold_ttl_s=30.0)
    assert (await s.add(Add("tenant", 5, limit=10, **hold), Add("key", 5, **hold))).ok
    entry = Entry("ledger", "req-1", {"usd": 1.5})
    settles = (Settle("tenant", "req-1", 1.5), Settle("key", "req-1", 1.5))
    assert await s.commit(settles, entry)
    assert (await s.value("tenant"), await s.value("key")) == (1.5, 1.5)
    assert not await s.commit(settles, entry)  # retried after a lost reply: nothing twice
    assert (await s.value("tenant"), await s.value("key")) == (1.5, 1.5)
    assert [(rid, rec) for _, rid, rec in await s.read("ledger")] == [("req-1", {"usd": 1.5})]
    assert await s.commit((Settle("tenant", "gone", 0.5),))  # no entry: always applied
    assert await s.value("tenant") == 2.0


async def test_holds_expire_settle_and_release(backend: Backend) -> None:
    s = backend.store
    assert (await s.add(Add("budget", 6, limit=10, hold="r1", hold_ttl_s=0.4))).ok
    assert not (await s.add(Add("budget", 6, limit=10, hold="r2", hold_ttl_s=0.4))).ok
    # settled: the hold of 6 becomes the 2 really spent
    assert await s.settle("budget", "r1", 2) == 2.0
    assert (await s.add(Add("budget", 7, limit=10, hold="r3", hold_ttl_s=0.4))).ok
    assert await s.release("budget", "r3") == 2.0
    # a hold nobody settles (a crashed gateway's) comes back by itself
    assert (await s.add(Add("budget", 8, limit=10, hold="r4", hold_ttl_s=0.3))).ok
    assert await s.value("budget") == 10.0
    await backend.advance(0.45)
    assert await s.value("budget") == 2.0
    # what was spent counts even when its hold already expired
    assert await s.settle("budget", "r4", 3) == 5.0
    assert await s.release("budget", "never-held") == 5.0


async def test_a_log_takes_each_id_once_and_reads_in_order(backend: Backend) -> None:
    s = backend.store
    for i in range(5):
        assert await s.append("ledger", f"req-{i}", {"i": i, "usd": i * 0.5})
    assert not await s.append("ledger", "req-2", {"i": 99})  # a retried append
    rows = await s.read("ledger")
    assert [(seq, rid, rec["i"]) for seq, rid, rec in rows] == [
        (1, "req-0", 0), (2, "req-1", 1), (3, "req-2", 2), (4, "req-3", 3), (5, "req-4", 4)
    ]  # fmt: skip
    assert [seq for seq, _, _ in await s.read("ledger", after=3, limit=1)] == [4]
    assert await s.read("ledger", after=5) == []
    assert await s.read("other") == []


async def test_compare_and_set(backend: Backend) -> None:
    s = backend.store
    assert await s.get("k") == (None, 0)
    assert await s.put("k", b"one", version=0)
    assert not await s.put("k", b"lost", version=0)  # someone wrote first
    value, version = await s.get("k")
    assert (value, version) == (b"one", 1)
    assert await s.put("k", b"two", version=1)
    assert await s.get("k") == (b"two", 2)


async def test_a_lease_has_one_holder_until_it_expires(backend: Backend) -> None:
    s = backend.store
    assert await s.lease("leader", "a", 0.4)
    assert not await s.lease("leader", "b", 0.4)
    assert await s.lease("leader", "a", 0.4)  # renewed
    await s.unlease("leader", "b")  # not b's to give back
    assert not await s.lease("leader", "b", 0.4)
    await backend.advance(0.5)
    assert await s.lease("leader", "b", 0.4)  # a stopped renewing
    await s.unlease("leader", "b")
    assert await s.lease("leader", "a", 0.4)


async def test_concurrent_adds_never_pass_the_limit(backend: Backend) -> None:
    s = backend.store
    results = await asyncio.gather(*(s.add(Add("c", 1, limit=25)) for _ in range(60)))
    assert sum(r.ok for r in results) == 25
    assert await s.value("c") == 25.0


def _hammer(path: str, n: int) -> int:
    async def go() -> int:
        store = SqliteStore(path)
        ok = sum([(await store.add(Add("shared", 1, limit=100))).ok for _ in range(n)])
        await store.close()
        return ok

    return asyncio.run(go())


def test_sqlite_processes_share_one_limit(tmp_path: Any) -> None:
    """Four processes on one file: exactly the limit is admitted."""
    path = str(tmp_path / "shared.db")
    SqliteStore(path)  # create the schema once
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        admitted = sum(pool.starmap(_hammer, [(path, 60)] * 4))
    assert admitted == 100


async def test_unreachable_redis_is_store_unavailable_not_a_crash() -> None:
    store = open_store(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable):
        await store.add(Add("x", 1, limit=1))
    await store.close()


def test_store_urls() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    for bad in ("sqlite://", "postgres://x", "nothing"):
        with pytest.raises(ConfigError):
            open_store(bad)
    with pytest.raises(ValueError):
        Add("k", 1, hold="h")  # a hold needs its expiry
