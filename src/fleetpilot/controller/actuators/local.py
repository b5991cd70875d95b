"""The local actuator: a pool's replicas are ``fleetpilot emulate`` processes on 127.0.0.1.

Scale up starts ``python -m fleetpilot emulate --model M --accelerator A --port P
--time-scale S``; a replica is *starting* until both its ``/health`` answers and the
offering's modelled start-up delay (``startup_s``, node provisioning plus weight loading) has
passed on the clock, then *ready*.  Scale down picks starting replicas first, then the newest
ready ones, marks them *draining* (the gateway stops routing to them), waits until the
replica's own ``/metrics`` shows nothing running or waiting (twice in a row) or
``drain_timeout_s`` passes, and only then stops the process (SIGTERM, then SIGKILL).

Spot pre-emptions (:class:`SpotPlay`) come from a list of pre-emption times per spot pool
(e.g. ``SpotMarket.preemptions()``, seconds from the actuator's start) or from a seeded
Poisson process per spot replica (the offering's ``interruption_rate`` per replica-hour
unless overridden).  ``notice_s`` before each pre-emption the victim is marked draining and a
:class:`~.base.PreemptionNotice` is published; at the pre-emption it gets SIGKILL, as a
reclaimed instance would, and the gateway continues its streams on other replicas.

``events`` records ``(time, replica, what)`` for every start, ready, draining, notice, stop,
kill and unexpected exit, in order.  Every child is stopped on :meth:`close` (``async with``
closes on errors too); the supervisor also asks the kernel to end children if this process
dies.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from fleetpilot.clock import Clock
from fleetpilot.controller.actuators.base import ACTIVE, NoticeBus, PreemptionNotice
from fleetpilot.core.capacity import Plan
from fleetpilot.core.model import CapacityClass, Pool, Replica, ReplicaState
from fleetpilot.engines import in_flight
from fleetpilot.errors import ConfigError
from fleetpilot.procs import Child, ChildFailed, Supervisor, fleetpilot_command, free_port

__all__ = ["LocalActuator", "SpotPlay"]

log = logging.getLogger("fleetpilot.controller")


@dataclass(frozen=True, slots=True)
class SpotPlay:
    """Which spot pre-emptions the local actuator acts out.

    ``times``: pool name -> pre-emption times (clock seconds after the actuator started); when
    given, only these happen.  Otherwise each spot replica is pre-empted after an exponential
    lifetime drawn from ``random.Random(seed)`` at ``rate_per_hour`` (default: its offering's
    ``interruption_rate``).
    """

    notice_s: float = 120.0
    times: Mapping[str, Sequence[float]] | None = None
    rate_per_hour: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.notice_s < 0:
            raise ConfigError("spot notice_s must not be negative")
        if self.rate_per_hour is not None and self.rate_per_hour < 0:
            raise ConfigError("spot rate_per_hour must not be negative")


@dataclass(eq=False)
class _Member:
    replica: Replica
    child: Child
    started: float
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stopping: bool = False

    @property
    def state(self) -> ReplicaState:
        return self.replica.state


class LocalActuator:
    def __init__(
        self,
        clock: Clock,
        *,
        time_scale: float | None = None,
        catalogue: Path | str | None = None,
        host: str = "127.0.0.1",
        drain_timeout_s: float = 300.0,
        drain_poll_real_s: float = 0.1,
        health_timeout_real_s: float = 30.0,
        stop_grace_real_s: float = 5.0,
        spot: SpotPlay | None = None,
        on_change: Callable[[list[Replica]], object] | None = None,
    ) -> None:
        self.clock = clock
        self.time_scale = time_scale if time_scale is not None else clock.real_seconds(1.0)
        self.catalogue = catalogue
        self.host = host
        self.drain_timeout_s = drain_timeout_s
        self.drain_poll_real_s = drain_poll_real_s
        self.health_timeout_real_s = health_timeout_real_s
        self.spot = spot
        self.on_change = on_change
        self.started_at = clock.now()
        self.events: list[tuple[float, str, str]] = []
        self._sup = Supervisor(grace_s=stop_grace_real_s)
        self._members: dict[str, _Member] = {}
        self._pools: dict[str, Pool] = {}
        self._seq: dict[str, int] = {}
        self._bus = NoticeBus()
        self._rng = random.Random(spot.seed if spot else 0)
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        if spot is not None and spot.times:
            self._spawn(self._play_trace(spot), None)

    # -- the Actuator protocol --------------------------------------------------------------
    async def apply(self, plan: Plan, pools: Sequence[Pool]) -> None:
        if self._closed:
            raise RuntimeError("the local actuator is closed")
        for pool in pools:
            self._pools[pool.name] = pool
        for pool in pools:
            if pool.name not in plan.targets:
                continue
            target = pool.offering.within_quota(int(plan.targets[pool.name]))
            active = [m for m in self._members.values() if m.replica.pool == pool.name]
            active = [m for m in active if m.state in ACTIVE]
            for _ in range(target - len(active)):
                await self._start(pool)
            if len(active) > target:
                # Starting ones first (they serve nothing yet), newest first within each.
                victims = sorted(active, key=lambda m: (m.state is ReplicaState.READY, -m.started))
                for m in victims[: len(active) - target]:
                    self._begin_drain(m)

    async def replicas(self) -> list[Replica]:
        return self.snapshot()

    async def drain(self, replica_id: str) -> None:
        m = self._members.get(replica_id)
        if m is not None:
            self._begin_drain(m)

    def notices(self) -> AsyncIterator[PreemptionNotice]:
        return self._bus.subscribe()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = set(self._background)
        for m in self._members.values():
            m.stopping = True
            tasks |= m.tasks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.shield(self._sup.stop_all())
        finally:
            for m in list(self._members.values()):
                self._record(m, "stopped")
            self._members.clear()
            self._bus.close()
            if self._session is not None:
                await self._session.close()
            self._changed()

    async def __aenter__(self) -> LocalActuator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- views -------------------------------------------------------------------------------
    def snapshot(self) -> list[Replica]:
        return sorted((m.replica for m in self._members.values()), key=lambda r: r.id)

    @property
    def notice_history(self) -> list[PreemptionNotice]:
        return list(self._bus.history)

    # -- lifecycle of one replica --------------------------------------------------------------
    async def _start(self, pool: Pool) -> None:
        if pool.profile is None:
            raise ConfigError(f"pool {pool.name} has no profile; the emulator needs one")
        n = self._seq.get(pool.name, 0)
        self._seq[pool.name] = n + 1
        rid = f"{pool.name}/{n}"
        port = free_port()
        url = f"http://{self.host}:{port}"
        args = [
            "emulate",
            "--model", pool.profile.model,
            "--accelerator", pool.offering.accelerator,
            "--host", self.host,
            "--port", str(port),
            "--time-scale", repr(self.time_scale),
        ]  # fmt: skip
        if self.catalogue is not None:
            args += ["--catalogue", str(self.catalogue)]
        child = await self._sup.start(rid, fleetpilot_command(*args))
        replica = Replica(
            rid, pool.name, pool.model, url, pool.offering, pool.profile, ReplicaState.STARTING
        )
        m = _Member(replica, child, self.clock.now())
        self._members[rid] = m
        self._record(m, "start")
        self._changed()
        self._spawn(self._bring_up(m, pool), m)
        self._spawn(self._watch(m), m)
        rate = self._spot_rate(pool)
        if rate > 0:
            lifetime = self._rng.expovariate(rate / 3600.0)
            self._spawn(self._preempt_at(m, m.started + lifetime), m)

    async def _bring_up(self, m: _Member, pool: Pool) -> None:
        failed: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    self._sup.wait_healthy(
                        m.child, m.replica.url, timeout_s=self.health_timeout_real_s
                    )
                )
                tg.create_task(self.clock.sleep(pool.offering.startup_s))
        except* ChildFailed as group:
            failed = group.exceptions[0]
        if failed is not None:
            log.warning("replica %s failed to start: %s", m.replica.id, failed)
            await self._stop(m, "failed")
        elif m.state is ReplicaState.STARTING:
            self._set_state(m, ReplicaState.READY)
            self._record(m, "ready")

    async def _watch(self, m: _Member) -> None:
        code = await m.child.process.wait()
        if not m.stopping:
            log.warning("replica %s exited with code %s", m.replica.id, code)
            self._record(m, "exited")
            m.stopping = True
            await self._sup.stop(m.child)  # reap the reader; the process is already gone
            self._gone(m)

    def _begin_drain(self, m: _Member) -> None:
        if m.state in (ReplicaState.DRAINING, ReplicaState.GONE) or m.stopping:
            return
        was_serving = m.state is ReplicaState.READY
        self._set_state(m, ReplicaState.DRAINING)
        self._record(m, "draining")
        self._spawn(self._drain_then_stop(m, was_serving), m)

    async def _drain_then_stop(self, m: _Member, was_serving: bool) -> None:
        if was_serving:
            deadline = self.clock.now() + self.drain_timeout_s
            idle = 0
            # Let whoever routes to it see the draining state before counting.
            await self._sleep_real(max(self.drain_poll_real_s, 0.2))
            while idle < 2 and self.clock.now() < deadline:
                n = await self._in_flight(m)
                idle = idle + 1 if n == 0 else 0
                if idle < 2:
                    await self._sleep_real(self.drain_poll_real_s)
        await self._stop(m, "stopped")

    async def _stop(self, m: _Member, what: str) -> None:
        if m.stopping and m.replica.id not in self._members:
            return
        m.stopping = True
        await self._sup.stop(m.child)
        self._record(m, what)
        self._gone(m)

    async def _kill(self, m: _Member) -> None:
        if m.replica.id not in self._members:
            return
        m.stopping = True
        await self._sup.kill(m.child)
        self._record(m, "killed")
        self._gone(m)

    def _gone(self, m: _Member) -> None:
        if self._members.pop(m.replica.id, None) is None:
            return
        m.replica = replace(m.replica, state=ReplicaState.GONE)
        current = asyncio.current_task()
        for t in m.tasks:
            if t is not current:
                t.cancel()
        self._changed()

    # -- spot ---------------------------------------------------------------------------------
    def _spot_rate(self, pool: Pool) -> float:
        spot = self.spot
        if spot is None or spot.times or pool.offering.capacity_class is not CapacityClass.SPOT:
            return 0.0
        if spot.rate_per_hour is not None:
            return spot.rate_per_hour
        return pool.offering.interruption_rate

    async def _preempt_at(self, m: _Member, when: float) -> None:
        assert self.spot is not None
        await self.clock.sleep(when - self.spot.notice_s - self.clock.now())
        await self._preempt(m, when)

    async def _preempt(self, m: _Member, deadline: float) -> None:
        if m.replica.id not in self._members:
            return
        now = self.clock.now()
        deadline = max(deadline, now)
        if m.state is not ReplicaState.DRAINING:
            self._set_state(m, ReplicaState.DRAINING)
        self._record(m, "notice")
        self._bus.publish(PreemptionNotice(m.replica.id, m.replica.pool, now, deadline))
        await self.clock.sleep(deadline - now)
        await self._kill(m)

    async def _play_trace(self, spot: SpotPlay) -> None:
        assert spot.times is not None
        events = sorted((t, pool) for pool, times in spot.times.items() for t in times)
        for t, pool in events:
            at = self.started_at + t
            await self.clock.sleep(at - spot.notice_s - self.clock.now())
            candidates = [
                m
                for m in self._members.values()
                if m.replica.pool == pool and m.state in ACTIVE and not m.stopping
            ]
            if not candidates:
                log.info("spot pre-emption at %.1f in %s: no replica to take", t, pool)
                continue
            # The reclaimed instance is a serving one when there is one; oldest first.
            victim = min(candidates, key=lambda m: (m.state is not ReplicaState.READY, m.started))
            self._spawn(self._preempt(victim, at), victim)

    # -- helpers ------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], m: _Member | None) -> None:
        task = asyncio.ensure_future(coro)
        bucket = m.tasks if m is not None else self._background
        bucket.add(task)
        task.add_done_callback(bucket.discard)
        task.add_done_callback(_log_failure)

    def _set_state(self, m: _Member, state: ReplicaState) -> None:
        m.replica = replace(m.replica, state=state)
        self._changed()

    def _record(self, m: _Member, what: str) -> None:
        self.events.append((self.clock.now(), m.replica.id, what))
        log.info("replica %s %s", m.replica.id, what)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.snapshot())

    async def _sleep_real(self, seconds: float) -> None:
        unit = self.clock.real_seconds(1.0)
        await self.clock.sleep(seconds / unit if unit > 0 else seconds)

    async def _in_flight(self, m: _Member) -> int:
        """Running plus waiting sequences from the replica's ``/metrics``; 0 if unreachable."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        try:
            async with self._session.get(m.replica.url + "/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return 0
        return in_flight(text)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("local actuator task failed", exc_info=task.exception())
