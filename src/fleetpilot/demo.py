"""``fleetpilot demo``: routing policies over a static fleet, the controller over a day, and
two tenants on one fleet.

Part 1 (this module) compares routing policies.  Part 2 (:mod:`fleetpilot.demo_controller`)
runs the capacity controller with the local actuator over one synthetic day: the fleet grows
with the day's peak, shrinks after it, and survives spot pre-emptions.  Part 3
(:mod:`fleetpilot.demo_tenants`) runs two tenants, one into its budget.  The exit code is 0
only when no part lost a request and part 3 showed its refusals where they belong.

Part 1.  The fleet mixes cheap-slow and fast-expensive capacity (two A10G spot, an L4 and an
L40S on demand, an A100 reserved) for one model.  For every policy the demo starts a gateway in
front of it, replays the same trace open-loop, and half-way pre-empts a spot replica the way a cloud
does: a notice (``POST /admin/drain``, so no new work goes there), then SIGKILL, with streams
still running on it for the gateway to continue elsewhere.  The replica comes back before the
next policy, so every policy meets the same fleet.

Time: the emulators and the gateway run with ``time_scale`` real seconds per modelled second
and the trace is replayed at that same scale, so modelled latencies, deadlines, dollars and
trace time are all the same (trace) seconds; ``duration`` real seconds replay
``duration / time_scale`` trace seconds, and the trace's diurnal period is that whole span
(one "day").  Every child process and the temporary fleet file go away however the demo ends.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetpilot import llamacpp
from fleetpilot.core.model import CapacityClass
from fleetpilot.core.routing import ROUTERS
from fleetpilot.core.workload import LengthDist, TraceRequest, synthetic_trace
from fleetpilot.demo_controller import DayResult, DaySettings, describe, print_day, run_day
from fleetpilot.demo_engine import EngineResult, print_engine, run_engine
from fleetpilot.demo_guard import GuardRow, guard_ok, print_guard, run_guard
from fleetpilot.demo_rag import RagResult, print_rag, run_rag
from fleetpilot.demo_tenants import TenantsResult, print_tenants, run_tenants
from fleetpilot.errors import FleetpilotError
from fleetpilot.loadgen import LoadSummary, Outcome, metric_sums, replay
from fleetpilot.procs import Child, ChildFailed, Supervisor, fleetpilot_command, free_port

__all__ = ["DEMO_FLEET", "PARTS", "PolicyResult", "run_demo"]

MODEL = "llama-3.1-8b"
HOST = "127.0.0.1"
TIME_SCALE = 0.25  # real seconds per modelled second: 60 s replay four trace minutes
MEAN_RPS = 3.6  # trace requests per second, averaged over the day
TTFT_SLO_S = 2.0
NOTICE_S = 2.0  # trace seconds between the spot notice (drain) and the kill
PARTS = ("routing", "controller", "tenants", "guard", "rag")
# Chat-sized answers: the Azure 2023 spread (sigma ~1) around a shorter median, and a cap that
# keeps the slowest replica's longest answer within a demo's patience.
PROMPTS = LengthDist(median=256, sigma=1.0, low=16, high=2048)
OUTPUTS = LengthDist(median=64, sigma=1.0, low=8, high=384)


class DemoFailed(FleetpilotError):
    """The demo could not carry out a step (a child failed, an admin call was refused)."""


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    accelerator: str
    capacity_class: CapacityClass
    replicas: int


DEMO_FLEET = (
    PoolSpec("a10g-spot", "A10G", CapacityClass.SPOT, 2),
    PoolSpec("l4-on-demand", "L4", CapacityClass.ON_DEMAND, 1),
    PoolSpec("l40s-on-demand", "L40S", CapacityClass.ON_DEMAND, 1),
    PoolSpec("a100-reserved", "A100-80G", CapacityClass.RESERVED, 1),
)


@dataclass(frozen=True, slots=True)
class PolicyResult:
    policy: str
    load: LoadSummary
    dollars: float
    retries: float
    continuations: float


@dataclass(slots=True)
class _Replica:
    pool: PoolSpec
    url: str = ""
    child: Child | None = None


# A port picked as free can be taken as the source port of an outgoing connection before the
# emulator binds it; such a start is retried on another port this many times.
_PORT_TRIES = 3


class _Fleet:
    """The emulators; a pre-empted one is started again on a new port, as a replacement
    instance gets a new address (the fleet file is written after every ``ensure_all``)."""

    def __init__(self, sup: Supervisor, time_scale: float) -> None:
        self.sup = sup
        self.time_scale = time_scale
        self.admin_token = secrets.token_urlsafe(24)  # the gateway's admin credential
        self.replicas = [_Replica(pool) for pool in DEMO_FLEET for _ in range(pool.replicas)]

    async def start(self, replica: _Replica) -> None:
        for attempt in range(_PORT_TRIES):
            port = free_port()
            replica.url = f"http://{HOST}:{port}"
            args = fleetpilot_command(
                "emulate", "--model", MODEL, "--accelerator", replica.pool.accelerator,
                "--host", HOST, "--port", str(port), "--time-scale", f"{self.time_scale:g}",
            )  # fmt: skip
            name = f"emulator {replica.pool.accelerator} {replica.url}"
            try:
                replica.child = await self.sup.start_healthy(name, args, replica.url)
                return
            except ChildFailed as exc:
                if "address already in use" not in str(exc) or attempt + 1 == _PORT_TRIES:
                    raise

    async def ensure_all(self) -> None:
        down = [r for r in self.replicas if r.child is None or not r.child.running]
        await asyncio.gather(*(self.start(r) for r in down))

    def spot_victim(self) -> _Replica:
        return next(r for r in self.replicas if r.pool.capacity_class is CapacityClass.SPOT)

    def write(self, path: Path, time_scale: float) -> None:
        pools = [
            {
                "name": pool.name,
                "model": MODEL,
                "accelerator": pool.accelerator,
                "capacity_class": pool.capacity_class.value,
                "replicas": [r.url for r in self.replicas if r.pool is pool],
            }
            for pool in DEMO_FLEET
        ]
        gateway = {
            "host": HOST,
            "ttft_slo_s": TTFT_SLO_S,
            "time_scale": time_scale,
            "health_interval_s": 0.5,
            "admin_token": self.admin_token,
        }
        path.write_text(yaml.safe_dump({"gateway": gateway, "pools": pools}, sort_keys=False))


def demo_trace(duration: float, seed: int, time_scale: float = TIME_SCALE) -> list[TraceRequest]:
    """The trace every policy replays: ``duration`` real seconds of a compressed day."""
    return list(
        synthetic_trace(
            duration / time_scale,
            MEAN_RPS,
            seed,
            burst_multiplier=1.5,
            prompt=PROMPTS,
            output=OUTPUTS,
        )
    )


async def _scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Sum every sample of the gateway's counters by sample name."""
    try:
        async with session.get(f"{url}/metrics") as resp:
            resp.raise_for_status()
            text = await resp.text()
    except aiohttp.ClientError as exc:
        raise DemoFailed(f"cannot read the gateway's metrics at {url}/metrics: {exc}") from exc
    return metric_sums(text)


async def _preempt(
    fleet: _Fleet, session: aiohttp.ClientSession, gateway: str, at_s: float, notice_s: float
) -> None:
    """The spot notice at ``at_s`` real seconds, the kill ``notice_s`` later."""
    victim = fleet.spot_victim()
    await asyncio.sleep(at_s)
    async with session.post(
        f"{gateway}/admin/drain",
        json={"replica": victim.url},
        headers={"Authorization": f"Bearer {fleet.admin_token}"},
    ) as resp:
        resp.raise_for_status()
    await asyncio.sleep(notice_s)
    if victim.child is not None:
        await fleet.sup.kill(victim.child)
        victim.child = None


async def _run_policy(
    policy: str,
    fleet: _Fleet,
    fleet_file: Path,
    trace: list[TraceRequest],
    duration: float,
    time_scale: float,
    console: Console,
) -> PolicyResult:
    await fleet.ensure_all()
    fleet.write(fleet_file, time_scale)
    port = free_port()
    url = f"http://{HOST}:{port}"
    args = fleetpilot_command(
        "gateway", "--fleet", str(fleet_file), "--port", str(port), "--router", policy
    )
    gateway = await fleet.sup.start_healthy(f"gateway ({policy})", args, url)
    try:
        columns = (
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            with Progress(*columns, console=console, transient=False) as progress:
                bar = progress.add_task(policy, total=len(trace), status="")
                counts = {"ok": 0, "shed": 0, "lost": 0}

                def done(o: Outcome) -> None:
                    counts["lost" if o.lost else o.status] += 1
                    status = " ".join(f"{k} {v}" for k, v in counts.items())
                    progress.update(bar, advance=1, status=status)

                notice = _preempt(fleet, session, url, duration / 2, NOTICE_S * time_scale)
                preemption = asyncio.create_task(notice, name="pre-emption")
                try:
                    result = await replay(
                        url,
                        MODEL,
                        trace,
                        time_scale=time_scale,
                        ttft_slo_s=TTFT_SLO_S,
                        on_done=done,
                    )
                finally:
                    preemption.cancel()  # done by now unless the replay failed
                    await asyncio.wait([preemption])
                if not preemption.cancelled() and preemption.exception() is not None:
                    raise DemoFailed(f"pre-empting a spot replica failed: {preemption.exception()}")
            sums = await _scrape(session, url)
    finally:
        await fleet.sup.stop(gateway)
    return PolicyResult(
        policy=policy,
        load=result.summary(),
        dollars=sums.get("fleetpilot_cost_dollars_total", 0.0),
        retries=sums.get("fleetpilot_retries_total", 0.0),
        continuations=sums.get("fleetpilot_continuations_total", 0.0),
    )


def _seconds(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def _triple(a: float, b: float, c: float) -> str:
    return " ".join(_seconds(x) for x in (a, b, c))


def results_table(results: list[PolicyResult], trace_s: float) -> Table:
    table = Table(
        title=f"{MODEL}: a day compressed to {trace_s:.0f} trace seconds, a spot replica "
        f"pre-empted half-way; latencies in trace seconds (TTFT SLO {TTFT_SLO_S:g} s)"
    )
    table.add_column("policy", no_wrap=True)
    table.add_column("requests", justify="right")
    table.add_column("TTFT p50 p95 p99", justify="right", no_wrap=True)
    table.add_column("e2e p50 p95 p99", justify="right", no_wrap=True)
    for name in ("SLO %", "shed", "retried", "continued", "lost", "$ spent"):
        table.add_column(name, justify="right")
    for r in results:
        s = r.load
        slo = "-" if math.isnan(s.slo_attainment) else f"{100 * s.slo_attainment:.1f}"
        table.add_row(
            r.policy,
            str(s.requests),
            _triple(s.ttft_p50, s.ttft_p95, s.ttft_p99),
            _triple(s.e2e_p50, s.e2e_p95, s.e2e_p99),
            slo,
            str(s.shed),
            f"{r.retries:g}",
            f"{r.continuations:g}",
            str(s.lost) if s.lost == 0 else f"[bold red]{s.lost}[/]",
            f"{r.dollars:.4f}",
        )
    return table


async def compare(
    duration: float,
    policies: list[str],
    seed: int,
    *,
    time_scale: float = TIME_SCALE,
    console: Console,
    on_result: Callable[[PolicyResult], None] | None = None,
) -> list[PolicyResult]:
    """Start the fleet, run every policy in turn, stop everything; the results in order."""
    trace = demo_trace(duration, seed, time_scale)
    results: list[PolicyResult] = []
    with tempfile.TemporaryDirectory(prefix="fleetpilot-demo-") as tmp:
        async with Supervisor() as sup:
            fleet = _Fleet(sup, time_scale)
            fleet_file = Path(tmp) / "fleet.yaml"
            for policy in policies:
                result = await _run_policy(
                    policy, fleet, fleet_file, trace, duration, time_scale, console
                )
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


def run_demo(
    duration: float,
    policies: list[str],
    seed: int,
    *,
    time_scale: float = TIME_SCALE,
    console: Console | None = None,
    parts: Sequence[str] = PARTS,
    day: DaySettings | None = None,
    engine: str = "emulator",
) -> int:
    """Run the demo's ``parts`` and print what they show: exit code 0 when no request was lost.

    ``duration``, ``policies`` and ``time_scale`` are part 1's; ``day`` is part 2's.
    ``engine`` ``llama.cpp`` adds part 1 on two real engines (:mod:`fleetpilot.demo_engine`)."""
    out = console or Console()
    if console is None and not out.is_terminal:
        out.width = max(out.width, 120)  # a log or a pipe: do not squeeze the table
    policies = [p.strip() for p in policies if p.strip()]
    unknown = [p for p in policies if p not in ROUTERS]
    routing = "routing" in parts
    bad_part = [p for p in parts if p not in PARTS]
    bad_numbers = duration <= 0 or time_scale <= 0
    if engine not in ("emulator", "llama.cpp"):
        out.print(f"[red]fleetpilot demo: --engine is emulator or llama.cpp, not {engine!r}[/]")
        return 2
    if engine == "llama.cpp" and llamacpp.find() is None:
        out.print(f"[red]fleetpilot demo --engine llama.cpp: {llamacpp.missing()}[/]")
        return 2
    nothing = not parts and engine == "emulator"
    if bad_part or nothing or bad_numbers or (routing and (unknown or not policies)):
        out.print(
            f"[red]fleetpilot demo: need parts among {list(PARTS)} (unknown: {bad_part}), a "
            f"positive duration and time scale and policies among {sorted(ROUTERS)}; "
            f"unknown: {unknown}[/]"
        )
        return 2
    results: list[PolicyResult] = []
    outcome: DayResult | None = None
    tenants: TenantsResult | None = None
    guarded: list[GuardRow] | None = None
    rag: RagResult | None = None
    real: EngineResult | None = None
    try:
        if routing:
            results = _routing_part(duration, policies, seed, time_scale, out)
        if engine == "llama.cpp":
            out.rule("Part 1, again · two real llama.cpp replicas, one killed half-way")
            real = asyncio.run(run_engine(out))
            print_engine(real, out)
        if "controller" in parts:
            settings = day or DaySettings(seed=seed)
            out.rule("Part 2 · the capacity controller over a synthetic day")
            out.print(describe(settings))
            outcome = asyncio.run(run_day(settings, console=out))
            print_day(outcome, out)
        if "tenants" in parts:
            out.rule("Part 3 · two tenants, one of which runs into its budget")
            tenants = asyncio.run(run_tenants(out))
            print_tenants(tenants, out)
        if "guard" in parts:
            out.rule("Part 4 · the guard stage: attacks refused, personal data redacted")
            guarded = asyncio.run(run_guard(out))
            print_guard(guarded, out)
        if "rag" in parts:
            out.rule("Part 5 · documents and retrieval: fresh index, cited context, no poison")
            rag = asyncio.run(run_rag(out))
            print_rag(rag, out)
    except KeyboardInterrupt:
        out.print("[yellow]interrupted; every process stopped[/]")
        return 130
    except FleetpilotError as exc:
        out.print(f"[red]fleetpilot demo failed:[/] {exc}")
        return 1
    lost = sum(r.load.lost for r in results) + (outcome.load.lost if outcome else 0)
    lost += tenants.lost if tenants else 0
    lost += real.load.lost if real else 0
    if lost:
        out.print(f"[bold red]{lost} request(s) lost[/]")
        return 1
    if guarded is not None and not guard_ok(guarded):
        return 1
    if rag is not None and not rag.ok:
        return 1
    return 0 if tenants is None or tenants.ok else 1


def _routing_part(
    duration: float, policies: list[str], seed: int, time_scale: float, out: Console
) -> list[PolicyResult]:
    trace_s = duration / time_scale
    pools = ", ".join(f"{p.replicas}x {p.accelerator} {p.capacity_class}" for p in DEMO_FLEET)
    out.rule("Part 1 · routing policies over a static fleet")
    out.print(
        f"Fleet: {pools} serving {MODEL}; {trace_s:.0f} trace seconds replayed in "
        f"{duration:g} real seconds per policy."
    )
    results = asyncio.run(compare(duration, policies, seed, time_scale=time_scale, console=out))
    out.print(results_table(results, trace_s))
    late = max(r.load.max_lag for r in results)
    if late > 0.5:
        out.print(
            f"[yellow]note: the load generator sent some requests up to {late:.1f} trace s late "
            "(this machine was short of CPU); latencies count that wait.[/]"
        )
    return results
