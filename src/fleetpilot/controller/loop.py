"""The live control loop: observe, plan, actuate — every few seconds, while holding the lease.

Each step the :class:`Controller`

1. renews its lease and does nothing else unless it holds it;
2. asks the actuator which replicas exist and syncs the gateway's membership to that;
3. reads demand per model from the gateway (an :class:`~fleetpilot.controller.observe.Observer`);
4. builds a :class:`~fleetpilot.core.model.Snapshot` (``now``, replicas, pools carrying their
   current targets and profiles, demand) and calls the capacity policy, a pure function
   ``policy(snapshot, state, params) -> (Plan, state)``; forecasting and shaping (hysteresis,
   churn bounds, spend cap) live in the policy and its state, so the simulator replays them;
5. hands the ``Plan`` to the actuator and syncs membership again, so a replica chosen to drain
   leaves the gateway's routing at once.

A pre-emption notice from the actuator drains that replica and triggers a step at once (with
the demand of the last window), so its replacement is planned without waiting for the next
tick.  A step that fails is logged and kept in ``errors``; the loop goes on.  ``stop()`` (or
leaving ``async with``) ends the loop and releases the lease; actuators are closed by whoever
made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from fleetpilot.clock import Clock
from fleetpilot.controller.actuators.base import Actuator, PreemptionNotice
from fleetpilot.controller.lease import InProcessLease, Lease
from fleetpilot.controller.observe import Membership, Observer
from fleetpilot.core.capacity import Plan, PlanParams
from fleetpilot.core.model import Demand, Pool, Snapshot
from fleetpilot.errors import ConfigError

__all__ = ["CapacityPolicy", "Controller", "Step", "capacity_policy"]

log = logging.getLogger("fleetpilot.controller")

CapacityPolicy = Callable[[Snapshot, Any, PlanParams], tuple[Plan, Any]]


def capacity_policy(name: str) -> CapacityPolicy:
    """A capacity policy by name: one of ``core.policies.CAPACITY_POLICIES``, ``adaptive``
    (``core.adaptive``), or ``package.module:function`` for one of your own."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            custom: CapacityPolicy = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load capacity policy {name!r}: {exc}") from None
        return custom
    from fleetpilot.core.policies import CAPACITY_POLICIES as known

    if name in known:
        return known[name]
    raise ConfigError(f"unknown capacity policy {name!r}; choose one of {sorted(known)}")


@dataclass(frozen=True, slots=True)
class Step:
    """One decision: when, why (``tick`` or ``notice``), what the policy saw and chose."""

    at: float
    reason: str
    snapshot: Snapshot
    plan: Plan


class Controller:
    def __init__(
        self,
        policy: CapacityPolicy,
        params: PlanParams,
        actuator: Actuator,
        observe: Observer,
        clock: Clock,
        lease: Lease | None = None,
        interval_s: float = 5.0,
        *,
        pools: Iterable[Pool],
        membership: Membership | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ConfigError("the control interval must be positive")
        self.policy = policy
        self.params = params
        self.actuator = actuator
        self.observe = observe
        self.clock = clock
        self.lease: Lease = lease or InProcessLease(clock, ttl_s=3 * interval_s)
        self.interval_s = interval_s
        self.membership = membership
        self.pools = {p.name: p for p in pools}
        self.targets = {name: p.target for name, p in self.pools.items()}
        self.state: Any = None
        self.leading = False
        self.steps: list[Step] = []
        self.notices: list[PreemptionNotice] = []
        self.errors: list[BaseException] = []
        self._demand: dict[str, Demand] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- one step ---------------------------------------------------------------------------
    async def step(self, reason: str = "tick") -> Plan | None:
        """Observe, plan and actuate once; None when another controller holds the lease."""
        async with self._lock:
            self.leading = await self.lease.acquire()
            if not self.leading:
                return None
            replicas = await self.actuator.replicas()
            if self.membership is not None:
                await self.membership.sync(replicas)
            if reason == "tick" or not self._demand:
                self._demand = await self.observe.demand()
            pools = tuple(replace(p, target=self.targets[p.name]) for p in self.pools.values())
            snapshot = Snapshot(
                now=self.clock.now(),
                replicas=tuple(replicas),
                tick=len(self.steps),
                pools=pools,
                demand=dict(self._demand),
                replicas_reported=getattr(self.actuator, "reports_replicas", True),
            )
            plan, self.state = self.policy(snapshot, self.state, self.params)
            await self.actuator.apply(plan, pools)
            for name, n in plan.targets.items():
                if name in self.targets:
                    self.targets[name] = n
            if self.membership is not None:
                await self.membership.sync(await self.actuator.replicas())
            self.steps.append(Step(snapshot.now, reason, snapshot, plan))
            log.info("step %d (%s): %s", len(self.steps), reason, plan.targets)
            return plan

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        notices = asyncio.create_task(self._follow(self.actuator.notices()))
        try:
            reason = "tick"
            while True:
                try:
                    await self.step(reason)
                except Exception as exc:  # keep controlling; the next step may succeed
                    log.exception("controller step failed")
                    self.errors.append(exc)
                reason = await self._wait()
        finally:
            notices.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notices
            if self.leading:
                await asyncio.shield(self.lease.release())
                self.leading = False

    async def _wait(self) -> str:
        """Sleep one interval, or less if a notice arrives: returns why it woke."""
        if self._wake.is_set():
            self._wake.clear()
            return "notice"
        sleep = asyncio.ensure_future(self.clock.sleep(self.interval_s))
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleep, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleep, wake):
                t.cancel()
        if self._wake.is_set():
            self._wake.clear()
            return "notice"
        return "tick"

    async def _follow(self, notices: Any) -> None:
        async for notice in notices:
            self.notices.append(notice)
            log.info("pre-emption notice for %s (gone at %.1f)", notice.replica_id, notice.deadline)
            if self.leading:
                try:
                    await self.actuator.drain(notice.replica_id)
                except Exception as exc:
                    log.exception("draining %s failed", notice.replica_id)
                    self.errors.append(exc)
            self._wake.set()

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="fleetpilot-controller")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Controller:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
