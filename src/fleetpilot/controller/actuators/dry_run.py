"""The dry-run actuator: prints each plan as a table and records it; starts nothing.

Use it to watch what a policy would do against live demand before letting it act
(``fleetpilot controller --actuator dry-run``), or in tests that only care about decisions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from fleetpilot.clock import Clock
from fleetpilot.controller.actuators.base import NoticeBus, PreemptionNotice
from fleetpilot.core.capacity import Plan
from fleetpilot.core.model import Pool, Replica

__all__ = ["AppliedPlan", "DryRunActuator", "plan_table"]


@dataclass(frozen=True, slots=True)
class AppliedPlan:
    at: float
    plan: Plan
    before: dict[str, int]
    after: dict[str, int]


def plan_table(plan: Plan, pools: Sequence[Pool], before: dict[str, int]) -> Table:
    """Pool, current -> target and $/hour at the target, with the total."""
    rows: list[tuple[str, str, str]] = []
    total = 0.0
    for pool in pools:
        now = before.get(pool.name, 0)
        target = plan.targets.get(pool.name, now)
        cost = target * pool.offering.price_per_hour
        total += cost
        change = f"{now} → {target}" if target != now else f"{target}"
        rows.append((pool.name, change, f"{cost:,.2f}"))
    title = "plan" + (f": {plan.note}" if plan.note else "")
    table = Table(title=title, show_footer=True)
    table.add_column("pool", footer="total")
    table.add_column("replicas", justify="right")
    table.add_column("$/h", justify="right", footer=f"{total:,.2f}")
    for row in rows:
        table.add_row(*row)
    if plan.shed:
        table.caption = "shed: " + ", ".join(s.value for s in plan.shed)
    return table


class DryRunActuator:
    def __init__(self, clock: Clock, *, console: Console | None = None, quiet: bool = False):
        self.clock = clock
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.applied: list[AppliedPlan] = []
        self.targets: dict[str, int] = {}
        self._bus = NoticeBus()

    async def apply(self, plan: Plan, pools: Sequence[Pool]) -> None:
        before = dict(self.targets)
        for pool in pools:
            if pool.name in plan.targets:
                self.targets[pool.name] = plan.targets[pool.name]
        self.applied.append(AppliedPlan(self.clock.now(), plan, before, dict(self.targets)))
        if not self.quiet:
            self.console.print(plan_table(plan, pools, before))

    reports_replicas = False  # it runs nothing: plans are taken as running

    async def replicas(self) -> list[Replica]:
        return []

    async def drain(self, replica_id: str) -> None:
        return None

    def notices(self) -> AsyncIterator[PreemptionNotice]:
        return self._bus.subscribe()

    async def close(self) -> None:
        self._bus.close()
