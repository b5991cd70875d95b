"""Each gateway's load on each replica, shared through the Store, so several gateways in
front of one fleet route on the whole of it.

A gateway counts only the requests it sent.  Four gateways each see a quarter of a replica's
load and, worse, none of the others' prompts still in prefill — what decides whether a new
request's first token is in time on a slow replica.  Every ``interval_s`` each gateway writes
its own counters per replica (requests in flight, prompt tokens awaiting a first token,
output tokens owed) as one document of its own, reads the others' documents, and adds their
sums to its view of each replica (:meth:`LiveReplica.set_others`).  A document older than
``stale_s`` is a gateway that died or stopped: it counts for nothing.  The cost is one write
and one read per gateway per interval, on the store's primitives (``get``/``put``).

A replica's own ``/metrics`` (the scrape, :func:`fleetpilot.gateway.server._scrape_loop`) is
the fallback where gateways share no store: it tells how many requests are in flight, but
not how much prefill is queued.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

from fleetpilot.gateway.fleet import LiveFleet
from fleetpilot.store.base import Store, StoreUnavailable

__all__ = ["SharedLoad"]

log = logging.getLogger("fleetpilot.gateway")

MEMBERS = "load/members"


class SharedLoad:
    def __init__(
        self,
        store: Store,
        fleet: LiveFleet,
        *,
        gateway_id: str | None = None,
        interval_s: float = 0.02,
        stale_s: float = 2.0,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.id = gateway_id or f"{os.getpid()}-{os.urandom(4).hex()}"
        self.interval_s = interval_s
        self.stale_s = stale_s
        self._version = 0
        self._members: list[str] = []
        self._joined = False

    def _doc(self) -> bytes:
        loads = {
            r.id: [r.in_flight, r.prompt_tokens_pending, r.remaining_tokens]
            for r in self.fleet.replicas
            if r.in_flight
        }
        return json.dumps({"t": time.time(), "replicas": loads}).encode()

    async def join(self) -> None:
        """Name this gateway in the members list (compare-and-set, so none is lost)."""
        for _ in range(64):
            raw, version = await self.store.get(MEMBERS)
            members = [] if raw is None else json.loads(raw)
            if self.id in members:
                self._joined = True
                return
            if await self.store.put(
                MEMBERS, json.dumps([*members, self.id]).encode(), version=version
            ):
                self._joined = True
                return

    async def publish(self) -> None:
        key = f"load/{self.id}"
        if not await self.store.put(key, self._doc(), version=self._version):
            _, self._version = await self.store.get(key)  # restarted store or our own restart
            await self.store.put(key, self._doc(), version=self._version)
        self._version += 1

    async def gather(self) -> None:
        raw, _ = await self.store.get(MEMBERS)
        self._members = [] if raw is None else [m for m in json.loads(raw) if m != self.id]
        docs = await asyncio.gather(*(self.store.get(f"load/{m}") for m in self._members))
        now = time.time()
        totals: dict[str, list[int]] = {}
        for doc, _ in docs:
            if doc is None:
                continue
            data = json.loads(doc)
            if now - float(data.get("t", 0.0)) > self.stale_s:
                continue
            for rid, counts in data.get("replicas", {}).items():
                t = totals.setdefault(rid, [0, 0, 0])
                for i in range(3):
                    t[i] += int(counts[i])
        for r in self.fleet.replicas:
            n, prefill, remaining = totals.get(r.id, (0, 0, 0))
            r.set_others(n, prefill, remaining)

    async def run(self) -> None:
        """Publish and gather every ``interval_s`` until cancelled; a store outage only
        pauses the sharing (each gateway routes on its own counts meanwhile)."""
        down = False
        while True:
            try:
                if not self._joined or down:  # a restarted store has forgotten us
                    await self.join()
                await self.publish()
                await self.gather()
                down = False
            except (StoreUnavailable, ValueError) as exc:
                if not down:
                    log.warning("cannot share load through the store: %s", exc)
                down = True
            await asyncio.sleep(self.interval_s)
