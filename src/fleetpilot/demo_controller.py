"""``fleetpilot demo``, part 2: the capacity controller over one synthetic day.

An in-process gateway (router ``cost_slo``) starts with no replicas.  A
:class:`~fleetpilot.controller.LocalActuator` runs ``fleetpilot emulate`` processes for four
pools of one model (A10G and L40S spot, L4 and L40S on demand), starting from one spot and one
on-demand replica; the :class:`~fleetpilot.controller.Controller` with the ``adaptive``
capacity policy steps every ``interval_s``, syncing the gateway's membership from the actuator
and reading demand from the gateway.  One synthetic day with a strong diurnal swing is replayed
through the gateway by the load generator, and the actuator plays spot pre-emptions with a
notice (at shares of the day: the day starts ``warmup_s`` after the actuator): the victim
drains at once, its replacement is planned at once, and streams still on it when it is killed
are continued elsewhere by the gateway.

Time.  Emulators, gateway, controller and actuator share one ``SystemClock(time_scale)``:
``day_s`` real seconds are ``day_s / time_scale`` modelled seconds, and every rate, latency and
dollar shown is in modelled time.  The day is compressed a thousandfold, the replicas only
twofold: they stream real tokens to a real client on this machine, and a faster clock would
let one replica carry all that two CPU cores can stream, so the fleet would have nothing to
grow for.  Start-up delays are ``startup_s`` instead of the catalogue's minutes.

Two adapters around the policy, both pure (:func:`in_day_time`, and
:func:`~fleetpilot.core.shaping.wait_for_ready`, the planner's own make-before-break rule
around whichever policy runs), and one around the demand observer (:class:`PooledLengths`):

- the planner sees the day as a day: its forecaster's half-lives and its hold are seconds of a
  real day, so it is shown ``now`` and start-up delays × ``86,400 / modelled day``;
- removals wait unless the ready replicas that stay carry the observed demand: the actuator
  drains at once, and without this the only serving replica was drained while its
  replacements were still starting, and requests failed with 504 (the fallback policy,
  ``reactive``, has no such rule of its own);
- mean request lengths pooled over the last few windows: a window here holds a handful of
  requests, and the long answers that finish last made the end of the day look long-winded
  (the fleet grew again as demand fell).

Everything shown afterwards is rebuilt from the actuator's event log (start, ready, draining,
notice, stopped, killed): ready replicas per pool at any instant, and replica time × price.
Every child process goes away however the run ends (the actuator's ``close()``).
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetpilot.catalogue import load_catalogue
from fleetpilot.clock import SystemClock
from fleetpilot.config import FleetConfig
from fleetpilot.controller import (
    CapacityPolicy,
    Controller,
    FleetMembership,
    FleetObserver,
    LocalActuator,
    SpotPlay,
    capacity_policy,
)
from fleetpilot.controller.observe import Observer
from fleetpilot.core.capacity import Plan, PlanParams
from fleetpilot.core.model import (
    CapacityClass,
    Demand,
    Pool,
    Replica,
    ReplicaState,
    Snapshot,
    blend,
)
from fleetpilot.core.policies import reactive
from fleetpilot.core.shaping import wait_for_ready
from fleetpilot.core.workload import LengthDist, TraceRequest, synthetic_trace
from fleetpilot.gateway.fastlane import listen
from fleetpilot.gateway.server import FLEET, METRICS, create_app
from fleetpilot.loadgen import LoadSummary, Outcome, metric_sums, replay
from fleetpilot.procs import ChildFailed

__all__ = [
    "DayResult",
    "DaySettings",
    "PooledLengths",
    "Span",
    "describe",
    "in_day_time",
    "print_day",
    "run_day",
    "spans_of",
]

MODEL = "llama-3.1-8b"
HOST = "127.0.0.1"
TTFT_SLO_S = 2.0
DAY_S = 86_400.0
OFFERINGS = (
    ("A10G", CapacityClass.SPOT),
    ("L40S", CapacityClass.SPOT),
    ("L4", CapacityClass.ON_DEMAND),
    ("L40S", CapacityClass.ON_DEMAND),
)
PROMPTS = LengthDist(median=256, sigma=1.0, low=16, high=2048)
OUTPUTS = LengthDist(median=64, sigma=1.0, low=8, high=384)
_GONE = ("stopped", "killed", "exited", "failed")


@dataclass(frozen=True, slots=True)
class DaySettings:
    """One run.  Times are modelled seconds unless named ``real``."""

    day_s: float = 80.0  # real seconds the day takes
    time_scale: float = 0.5  # real seconds per modelled second
    mean_rps: float = 2.5  # trace requests per modelled second, over the day
    amplitude: float = 0.9  # the day's quietest hour is 1 - amplitude of the mean
    interval_s: float = 6.0  # control interval
    startup_s: float = 4.0  # every offering's start-up delay
    warmup_s: float = 8.0  # from the actuator's start to the day's start
    notice_s: float = 3.0  # spot notice before the kill
    # (spot pool, share of the day) of each pre-emption
    preemptions: tuple[tuple[str, float], ...] = (("A10G-spot", 0.4), ("L40S-spot", 0.65))
    start_fleet: tuple[tuple[str, int], ...] = (("A10G-spot", 1), ("L4-on_demand", 1))
    policy: str = "adaptive"
    seed: int = 7

    @property
    def day_modelled_s(self) -> float:
        return self.day_s / self.time_scale


@dataclass(frozen=True, slots=True)
class Span:
    """One replica's life from the actuator's events (clock seconds); ``end`` is when it went
    (``how``: stopped, killed, exited, failed, or ``closed`` when the demo ended)."""

    replica: str
    pool: str
    start: float
    ready: float | None
    draining: float | None
    notice: float | None
    end: float
    how: str

    def ready_at(self, t: float) -> bool:
        gone = min(x for x in (self.draining, self.notice, self.end) if x is not None)
        return self.ready is not None and self.ready <= t < gone


@dataclass(frozen=True, slots=True)
class DayResult:
    settings: DaySettings
    pools: tuple[Pool, ...]
    trace: tuple[TraceRequest, ...]
    load: LoadSummary
    spans: tuple[Span, ...]
    day_start: float  # clock seconds
    day_end: float  # the last answer
    policy: str  # what planned: the policy's name, or the fallback and why
    steps: int
    errors: tuple[str, ...]  # controller steps that failed
    preemptions_played: int
    continuations: float
    attributed_dollars: float

    @property
    def prices(self) -> dict[str, float]:
        return {p.name: p.offering.price_per_hour for p in self.pools}

    def ready(self, t: float) -> dict[str, int]:
        out = {p.name: 0 for p in self.pools}
        for s in self.spans:
            out[s.pool] += s.ready_at(t)
        return out

    def dollars(self, t0: float, t1: float) -> float:
        """Replica time (launch to gone) × price within ``[t0, t1]``."""
        prices = self.prices
        return sum(
            prices[s.pool] * max(0.0, min(s.end, t1) - max(s.start, t0)) / 3600 for s in self.spans
        )

    def peak_per_hour(self) -> float:
        """The fleet's highest $/hour during the day (replicas launched and not yet gone)."""
        prices = self.prices
        times = [self.day_start] + [s.start for s in self.spans if s.start > self.day_start]
        return max(
            sum(prices[s.pool] for s in self.spans if s.start <= t < s.end)
            for t in times
            if t <= self.day_end
        )


# ---------------------------------------------------------------------------------------------
# The policy the controller runs


def in_day_time(policy: CapacityPolicy, factor: float) -> CapacityPolicy:
    """``policy`` seeing a compressed day as a day: ``now`` and start-up delays × ``factor``."""

    def stretched(snapshot: Snapshot, state: Any, params: PlanParams) -> tuple[Plan, Any]:
        pools = tuple(
            replace(p, offering=replace(p.offering, startup_s=p.offering.startup_s * factor))
            for p in snapshot.pools
        )
        return policy(replace(snapshot, now=snapshot.now * factor, pools=pools), state, params)

    return stretched


class _Fallback:
    """The chosen policy, and ``reactive`` from the first step it fails on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.policy = capacity_policy(name)
        self.failure: str | None = None

    def __call__(self, snapshot: Snapshot, state: Any, params: PlanParams) -> tuple[Plan, Any]:
        if self.failure is None:
            try:
                return self.policy(snapshot, state, params)
            except Exception as exc:  # a solver failing at this scale: keep the demo going
                self.failure = f"{type(exc).__name__}: {exc}"
                state = None
        return reactive(snapshot, state, params)

    def planned_by(self) -> str:
        if self.failure is None:
            return self.name
        return f"reactive (fallback: {self.name} failed with {self.failure})"


class PooledLengths:
    """Demand from ``observer``, its mean lengths pooled over the last ``windows`` windows that
    had requests (weighted by their rates).  A compressed day's control window holds a handful
    of requests, too few for the mean of heavy-tailed lengths; and the planner, seeing day
    time, remembers lengths for less than a window.  Rates pass through unchanged."""

    def __init__(self, observer: Observer, windows: int = 6) -> None:
        self.observer = observer
        self.history: dict[str, deque[Demand]] = {}
        self.windows = windows

    async def demand(self) -> dict[str, Demand]:
        out = await self.observer.demand()
        for model, d in out.items():
            seen = self.history.setdefault(model, deque(maxlen=self.windows))
            if d.rps > 0:
                seen.append(d)
            mix = blend(list(seen))
            if mix is not None:
                out[model] = replace(
                    d,
                    mean_prompt_tokens=mix.mean_prompt_tokens,
                    mean_output_tokens=mix.mean_output_tokens,
                )
        return out


# ---------------------------------------------------------------------------------------------
# Building blocks


def demo_pools(settings: DaySettings) -> tuple[Pool, ...]:
    catalogue = load_catalogue()
    start = dict(settings.start_fleet)
    out = []
    for accelerator, cls in OFFERINGS:
        (pool,) = catalogue.pools(MODEL, [accelerator], (cls,))
        offering = replace(pool.offering, startup_s=settings.startup_s)
        out.append(replace(pool, offering=offering, target=start.get(pool.name, 0)))
    return tuple(out)


def day_trace(settings: DaySettings) -> tuple[TraceRequest, ...]:
    return synthetic_trace(
        settings.day_modelled_s,
        settings.mean_rps,
        settings.seed,
        diurnal_amplitude=settings.amplitude,
        burst_rate_per_period=0.0,
        prompt=PROMPTS,
        output=OUTPUTS,
    )


def spans_of(events: Sequence[tuple[float, str, str]], closing: float) -> tuple[Span, ...]:
    """Replica lives from ``LocalActuator.events``; an end at or after ``closing`` (the demo
    shutting down) with no drain before it is ``closed``."""
    seen: dict[str, dict[str, float]] = {}
    for t, rid, what in events:
        seen.setdefault(rid, {}).setdefault(what, t)
    out = []
    for rid, at in seen.items():
        how = next((w for w in _GONE if w in at), "closed")
        end = at.get(how, closing)
        if how == "stopped" and end >= closing and "draining" not in at:
            how = "closed"
        pool = rid.rsplit("/", 1)[0]
        out.append(
            Span(rid, pool, at["start"], at.get("ready"), at.get("draining"), at.get("notice"),
                 end, how)
        )  # fmt: skip
    return tuple(sorted(out, key=lambda s: (s.start, s.replica)))


def _fleet_line(replicas: Sequence[Replica], pools: Sequence[Pool]) -> str:
    ready = {p.name: 0 for p in pools}
    per_hour = 0.0
    for r in replicas:
        if r.state is ReplicaState.READY:
            ready[r.pool] = ready.get(r.pool, 0) + 1
        if r.state is not ReplicaState.GONE:
            per_hour += r.offering.price_per_hour
    return " ".join(f"{name} {n}" for name, n in ready.items()) + f" | ${per_hour:.2f}/h"


async def _all_ready(actuator: LocalActuator, timeout_real_s: float) -> None:
    """Until the starting fleet serves: some replica ready, none still starting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_real_s
    while True:
        states = {r.state for r in actuator.snapshot()}
        if ReplicaState.READY in states and ReplicaState.STARTING not in states:
            return
        if loop.time() > deadline:
            raise ChildFailed(f"the starting fleet was not ready within {timeout_real_s:g} s")
        await asyncio.sleep(0.05)


def describe(settings: DaySettings) -> str:
    """What part 2 is about to do, in one paragraph."""
    s = settings
    start = " + ".join(f"{n}x {name}" for name, n in s.start_fleet)
    shocks = ", ".join(f"{name} at {100 * share:.0f}%" for name, share in s.preemptions)
    pools = ", ".join(f"{a} {c}" for a, c in OFFERINGS)
    return (
        f"Pools of {MODEL}: {pools}; start-up {s.startup_s:g} s; starting from {start}.  "
        f"The {s.policy} capacity policy (seeing the day as a day, removals waiting for starting "
        f"replicas) every {s.interval_s:g} s; spot pre-emptions with {s.notice_s:g} s notice: "
        f"{shocks}.  One day of {s.day_modelled_s:.0f} modelled s in {s.day_s:g} real s "
        f"(time scale {s.time_scale:g}), {s.mean_rps:g} req/s on average, "
        f"quietest {1 - s.amplitude:.0%} and busiest {1 + s.amplitude:.0%} of that."
    )


# ---------------------------------------------------------------------------------------------
# The run


async def run_day(settings: DaySettings, *, console: Console) -> DayResult:
    """Gateway, actuator and controller in this event loop; the day replayed through them."""
    clock = SystemClock(settings.time_scale)
    pools = demo_pools(settings)
    trace = day_trace(settings)
    factor = DAY_S / settings.day_modelled_s
    policy = _Fallback(settings.policy)
    params = PlanParams(ttft_slo_s=TTFT_SLO_S, min_replicas=1).with_knobs(
        {"hold_s": 2 * settings.interval_s * factor}
    )
    gateway = {
        "router": "cost_slo",
        "ttft_slo_s": TTFT_SLO_S,
        "time_scale": settings.time_scale,
        "health_interval_s": 0.5,
        "cooldown_s": 0.5,
        # membership is kept in process here; no admin call is made, so none may be
        "admin_token": secrets.token_urlsafe(24),
    }
    app = create_app(FleetConfig.model_validate({"gateway": gateway, "pools": []}), clock=clock)
    listening = await listen(app, HOST, 0)  # the front door ``fleetpilot gateway`` has
    columns = (
        TextColumn("{task.description:<14}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fleet]}  {task.fields[outcomes]}"),
        TimeElapsedColumn(),
    )
    try:
        url = f"http://{HOST}:{listening.port}"
        live = app[FLEET]
        membership = FleetMembership(live)
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("warming up", total=len(trace), fleet="", outcomes="")

            showing = [True]  # the fleet line stops at the day's end, not at shutdown

            def changed(replicas: list[Replica]) -> None:
                membership.sync_now(replicas)
                if showing[0]:
                    progress.update(bar, fleet=_fleet_line(replicas, pools))

            day = settings.day_modelled_s
            times: dict[str, list[float]] = {}
            for pool, share in settings.preemptions:
                times.setdefault(pool, []).append(settings.warmup_s + share * day)
            actuator = LocalActuator(
                clock,
                time_scale=settings.time_scale,
                spot=SpotPlay(notice_s=settings.notice_s, times=times),
                on_change=changed,
            )
            controller = Controller(
                in_day_time(wait_for_ready(policy), factor), params, actuator,
                PooledLengths(FleetObserver(live, app[METRICS], pools, clock)), clock, None,
                settings.interval_s, pools=pools, membership=membership,
            )  # fmt: skip
            counts = {"ok": 0, "shed": 0, "lost": 0}

            def done(o: Outcome) -> None:
                counts["lost" if o.lost else o.status] += 1
                outcomes = " ".join(f"{k} {v}" for k, v in counts.items())
                progress.update(bar, advance=1, outcomes=outcomes)

            async with actuator, controller:
                await _all_ready(actuator, timeout_real_s=30.0)
                await clock.sleep(actuator.started_at + settings.warmup_s - clock.now())
                progress.update(bar, description="synthetic day")
                day_start = clock.now()
                result = await replay(
                    url, MODEL, trace, time_scale=settings.time_scale, ttft_slo_s=TTFT_SLO_S,
                    on_done=done,
                )  # fmt: skip
                day_end = clock.now()
                showing[0] = False
                await controller.stop()
                closing = clock.now()
            sums = metric_sums(app[METRICS].render().decode("utf-8", "replace"))
    finally:
        await listening.stop(grace_s=5.0)
    return DayResult(
        settings=settings,
        pools=pools,
        trace=trace,
        load=result.summary(),
        spans=spans_of(actuator.events, closing),
        day_start=day_start,
        day_end=day_end,
        policy=policy.planned_by(),
        steps=len(controller.steps),
        errors=tuple(f"{type(e).__name__}: {e}" for e in controller.errors),
        preemptions_played=sum(what == "killed" for _, _, what in actuator.events),
        continuations=sums.get("fleetpilot_continuations_total", 0.0),
        attributed_dollars=sums.get("fleetpilot_cost_dollars_total", 0.0),
    )


# ---------------------------------------------------------------------------------------------
# What it prints


@dataclass(frozen=True, slots=True)
class _Row:
    label: str
    demand: float  # trace requests per modelled second in the slice
    ready: Mapping[str, int]  # at the slice's end
    per_hour: float  # mean $/hour over the slice
    events: str


def timeline(result: DayResult, slices: int = 10) -> list[_Row]:
    """The day in ``slices`` equal parts, plus its start."""
    day = result.settings.day_modelled_s
    length = day / slices
    rows = [_Row("start", math.nan, result.ready(result.day_start), math.nan, "")]
    for i in range(slices):
        t0 = result.day_start + i * length
        t1 = t0 + length
        arrivals = sum(i * length <= r.arrival < (i + 1) * length for r in result.trace)
        notices = [s.replica for s in result.spans if s.notice is not None and t0 <= s.notice < t1]
        events = ", ".join(f"{rid} pre-empted" for rid in notices)
        per_hour = result.dollars(t0, t1) * 3600 / length
        label = f"{100 * i // slices}–{100 * (i + 1) // slices}%"
        ready = result.ready(min(t1, result.day_end))
        rows.append(_Row(label, arrivals / length, ready, per_hour, events))
    return rows


def timeline_table(result: DayResult) -> Table:
    s = result.settings
    table = Table(
        title=f"Part 2 · {result.policy} controller over a synthetic day of {s.day_modelled_s:.0f} "
        f"modelled s ({s.day_s:g} real s); ready replicas at the end of each tenth, "
        "demand and $/h averaged over it"
    )
    table.add_column("day", no_wrap=True)
    table.add_column("demand req/s", justify="right")
    for p in result.pools:
        table.add_column(p.name, justify="right")
    table.add_column("fleet", no_wrap=True)
    table.add_column("$/h", justify="right")
    table.add_column("events")
    for row in timeline(result):
        total = sum(row.ready.values())
        table.add_row(
            row.label,
            "-" if math.isnan(row.demand) else f"{row.demand:.2f}",
            *(str(row.ready[p.name]) for p in result.pools),
            f"{'█' * total} {total}",
            "-" if math.isnan(row.per_hour) else f"{row.per_hour:.2f}",
            row.events,
        )
    return table


def _seconds(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def summary_table(result: DayResult) -> Table:
    table = Table(title=f"Part 2 · the day in numbers (TTFT SLO {TTFT_SLO_S:g} s, modelled)")
    names = ("requests", "TTFT p50 p99", "SLO %", "shed", "continued", "pre-empted", "lost",
             "fleet $", "attributed $", "peak fleet all day $")  # fmt: skip
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    s = result.load
    hours = (result.day_end - result.day_start) / 3600
    table.add_row(
        str(s.requests),
        f"{_seconds(s.ttft_p50)} {_seconds(s.ttft_p99)}",
        "-" if math.isnan(s.slo_attainment) else f"{100 * s.slo_attainment:.1f}",
        str(s.shed),
        f"{result.continuations:g}",
        f"{result.preemptions_played} of {len(result.settings.preemptions)}",
        str(s.lost) if s.lost == 0 else f"[bold red]{s.lost}[/]",
        f"{result.dollars(result.day_start, result.day_end):.4f}",
        f"{result.attributed_dollars:.4f}",
        f"{result.peak_per_hour() * hours:.4f}",
    )
    return table


def print_day(result: DayResult, console: Console) -> None:
    console.print(timeline_table(result))
    console.print(summary_table(result))
    drained = [s for s in result.spans if s.how == "stopped"]
    console.print(
        f"{len(result.spans)} replicas launched, {len(drained)} drained and stopped by the "
        f"controller, {result.preemptions_played} pre-empted; {result.steps} control steps.  "
        "fleet $: replica time × price during the day; attributed $: the gateway's per-request "
        "share of it; peak fleet all day: the day's most expensive fleet held from start to end."
    )
    if result.load.max_lag > 0.5:
        console.print(
            f"[yellow]note: the load generator sent some requests up to "
            f"{result.load.max_lag:.1f} modelled s late (short of CPU); latencies count it.[/]"
        )
    if result.load.lost:
        console.print(f"[bold red]lost requests by cause: {result.load.errors}[/]")
    if result.policy != result.settings.policy:
        console.print(f"[yellow]note: planned by {result.policy}[/]")
    for error in result.errors:
        console.print(f"[yellow]a control step failed: {error}[/]")
