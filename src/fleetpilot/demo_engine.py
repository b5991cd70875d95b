"""``fleetpilot demo --engine llama.cpp``: part 1 again, on two real engines.

Two llama.cpp ``llama-server`` replicas serve SmolLM2-135M on this machine's CPU
(:mod:`fleetpilot.llamacpp`; the demo only runs this part when they are installed).  The
demo measures one of them the way ``fleetpilot profile`` does, starts the gateway with that
profile inline, asks the model one question through it, then replays a short trace with
``cost_slo`` and, half-way, kills with SIGKILL the replica with the most streams in flight:
they are continued on the other, and nothing is lost.  Everything runs in real time.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import openai
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetpilot import llamacpp
from fleetpilot.core.workload import LengthDist, synthetic_trace
from fleetpilot.errors import FleetpilotError
from fleetpilot.loadgen import LoadSummary, Outcome, metric_sums, replay
from fleetpilot.procs import Supervisor
from fleetpilot.profiling import Measured, Profiler, profile_yaml

__all__ = ["EngineResult", "print_engine", "run_engine"]

SLO_S = 2.0
SECONDS = 60.0
RPS = 0.4  # what one of the two carries, once the other is killed


class EngineMissing(FleetpilotError):
    pass


@dataclass(slots=True)
class EngineResult:
    profile: Measured
    answer: str
    load: LoadSummary
    continued: int
    replicas: dict[str, int]
    seconds: float = SECONDS
    rps: float = RPS

    @property
    def ok(self) -> bool:
        return self.load.lost == 0


async def run_engine(out: Console, *, seconds: float = SECONDS, rps: float = RPS) -> EngineResult:
    engine = llamacpp.find()
    if engine is None:
        raise EngineMissing(llamacpp.missing())
    model = engine.served_as
    async with Supervisor() as sup:
        out.print("starting two llama-server replicas (one thread each) …")
        urls = await sup.llama_servers(2, engine)
        with Progress(console=out, transient=True) as bar:
            task = bar.add_task("profiling", total=1.0)
            profiler = Profiler(
                urls[0],
                model,
                progress=lambda what, share: bar.update(task, description=what, completed=share),
            )
            measured = await profiler.measure(
                "cpu-1t", prompts=(32, 96, 192), batches=(1, 2, 4, 8), repeats=2
            )
        entry = yaml.safe_load(profile_yaml(measured))["profiles"][model]["cpu-1t"]
        pool = {
            "name": "cpu", "model": model, "accelerator": "cpu-1t", "price_per_hour": 0.05,
            "engine": "llama.cpp", "replicas": urls,
            "profile": {k: entry[k] for k in ("prefill_rate", "max_batch", "context_tokens",
                                              "step_points")},
        }  # fmt: skip
        gateway = {"router": "cost_slo", "ttft_slo_s": SLO_S}
        with tempfile.TemporaryDirectory(prefix="fleetpilot-engine-") as tmp:
            url = await sup.gateway({"gateway": gateway, "pools": [pool]}, Path(tmp))
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x") as client:
                reply = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Name three fruits, briefly."}],
                    max_tokens=40,
                    temperature=0,
                )
            answer = (reply.choices[0].message.content or "").strip()
            trace = list(
                synthetic_trace(
                    seconds, rps, 11, batch_fraction=0.0,
                    prompt=LengthDist(24, 0.6, 8, 128), output=LengthDist(24, 0.5, 8, 64),
                )
            )  # fmt: skip
            counts: dict[str, int] = {}
            columns = (
                TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(),
            )  # fmt: skip
            with Progress(*columns, console=out) as progress:
                bar_id = progress.add_task("cost_slo", total=len(trace))

                def done(o: Outcome) -> None:
                    progress.update(bar_id, advance=1)
                    if o.replica:
                        counts[o.replica] = counts.get(o.replica, 0) + 1

                async def kill_half_way() -> None:
                    await asyncio.sleep(seconds / 2)
                    busiest = await _busiest(url)
                    for child in sup.children:
                        if child.name == f"llama-server {busiest}":
                            await sup.kill(child)

                killer = asyncio.create_task(kill_half_way())
                try:
                    result = await replay(
                        url, model, trace, time_scale=1.0, ttft_slo_s=SLO_S, on_done=done,
                        words=False, extra_body={"ignore_eos": True},
                    )  # fmt: skip
                finally:
                    killer.cancel()
                    await asyncio.wait([killer])
            continued = await _continuations(url)
    return EngineResult(measured, answer, result.summary(), continued, counts, seconds, rps)


async def _busiest(url: str) -> str:
    """The URL of the replica with the most requests in flight (the gateway's view)."""
    import aiohttp

    for _ in range(50):  # until one has a stream on it
        async with aiohttp.ClientSession() as s, s.get(url + "/admin/fleet") as r:
            rows = (await r.json())["replicas"]
        best = max(rows, key=lambda row: row["in_flight"])
        if best["in_flight"]:
            return str(best["url"])
        await asyncio.sleep(0.1)
    return str(rows[0]["url"])


async def _continuations(url: str) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return int(metric_sums(text).get("fleetpilot_continuations_total", 0.0))


def print_engine(r: EngineResult, out: Console) -> None:
    p = r.profile
    steps = ", ".join(f"{s * 1000:.0f} ms at {b}" for b, s in p.steps)
    out.print(
        f"measured profile ({p.engine} {p.version}, {p.hardware}): prefill "
        f"{p.prefill_rate:.0f} tokens/s, decode step {steps}, max_batch {p.max_batch}"
    )
    out.print(f"the model answers through the gateway: [italic]{r.answer!r}[/]")
    s = r.load

    def sec(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.2f}"

    table = Table(
        title=f"{r.seconds:.0f} s of traffic at {r.rps:g} req/s on two real replicas, one killed "
        f"half-way; real seconds (TTFT SLO {SLO_S:g} s)"
    )
    for col in ("requests", "TTFT p50 p95 p99", "e2e p50 p95 p99", "SLO %", "shed",
                "continued", "lost", "served by"):  # fmt: skip
        table.add_column(col, justify="right")
    slo = "-" if math.isnan(s.slo_attainment) else f"{100 * s.slo_attainment:.1f}"
    table.add_row(
        str(s.requests),
        " ".join(sec(x) for x in (s.ttft_p50, s.ttft_p95, s.ttft_p99)),
        " ".join(sec(x) for x in (s.e2e_p50, s.e2e_p95, s.e2e_p99)),
        slo,
        str(s.shed),
        str(r.continued),
        str(s.lost) if s.lost == 0 else f"[bold red]{s.lost}[/]",
        ", ".join(f"{k} {v}" for k, v in sorted(r.replicas.items())),
    )
    out.print(table)
