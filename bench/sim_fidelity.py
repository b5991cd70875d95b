"""Fidelity: the same short trace through the simulator and live through the real gateway.

Live: emulator processes (``fleetpilot emulate``) run the perf model in compressed real time,
the real gateway routes with ``cost_slo``, and the official openai client replays the trace
open-loop.  Simulated: :func:`fleetpilot.sim.request_level.simulate` with the same fleet,
router and trace.  Printed: TTFT and end-to-end p50/p99 of both and the relative difference;
target (issue 3): p50 and p99 TTFT within 15%.  This is the perf model agreeing with itself:
the emulator executes the model the simulator executes.

    .venv/bin/python bench/sim_fidelity.py [--minutes 10] [--rps 2] [--time-scale 0.5]

``--engine llama.cpp`` is the check against a real engine (issue 14): two ``llama-server``
replicas serving SmolLM2-135M on this CPU (one thread each), profiled first by
:class:`fleetpilot.profiling.Profiler` (what ``fleetpilot profile`` runs) unless
``--profile FILE`` gives one, then the trace replayed through the real gateway in real time.
The simulator replays the same requests at the same arrival times, with the prompt and output
token counts the engine reported, on a fleet with that profile, learning corrections as the
gateway does.  Its prompt is what the engine computed: llama.cpp's prefix cache serves the
chat template's shared system prompt (29 of a short request's 36 tokens), and the simulator
models no cache, so the cached tokens (``usage.prompt_tokens_details``) are left out.
Target: TTFT and end-to-end p50 and p99 within 15%, with a breakdown by prompt size so the
worst bucket shows.

    .venv/bin/python bench/sim_fidelity.py --engine llama.cpp [--minutes 4] [--rps 0.6]

The live side's loopback and client overhead is real time; at ``--time-scale s`` it shows up
multiplied by ``1/s`` in modelled seconds, so a smaller scale makes the live run faster and
less faithful.  The default 0.5 keeps that overhead a few tens of modelled milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from _machine import OtherLoad
from fleetpilot import llamacpp
from fleetpilot.catalogue import ProfileSpec, load_catalogue
from fleetpilot.core.model import CapacityClass, Offering, Pool
from fleetpilot.core.workload import LengthDist, TraceRequest, synthetic_trace
from fleetpilot.loadgen import replay
from fleetpilot.procs import Supervisor, fleetpilot_command, free_port
from fleetpilot.profiling import Profiler, profile_yaml
from fleetpilot.sim.request_level import STATUSES, simulate

LLAMA_MODEL = llamacpp.MODEL_NAME

MODEL = "llama-3.1-8b"
FLEET = {"A10G-spot": ("A10G", "spot", 2), "L40S-on_demand": ("L40S", "on_demand", 1)}
SLO = 2.0


async def live(trace, time_scale: float) -> tuple[np.ndarray, np.ndarray]:
    async with Supervisor() as sup:
        pools = []
        for name, (acc, cls, n) in FLEET.items():
            urls = []
            for i in range(n):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                args = fleetpilot_command(
                    "emulate", "--model", MODEL, "--accelerator", acc, "--port", str(port),
                    "--time-scale", str(time_scale),
                )  # fmt: skip
                await sup.start_healthy(f"{name}-{i}", args, url)
                urls.append(url)
            pools.append({"name": name, "model": MODEL, "accelerator": acc,
                          "capacity_class": cls, "replicas": urls})  # fmt: skip
        port = free_port()
        gw = {"port": port, "router": "cost_slo", "time_scale": time_scale, "ttft_slo_s": SLO}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fleet.yaml"
            path.write_text(yaml.safe_dump({"gateway": gw, "pools": pools}))
            url = f"http://127.0.0.1:{port}"
            await sup.start_healthy("gateway", fleetpilot_command("gateway", "--fleet", str(path)),
                                    url)  # fmt: skip
            result = await replay(url, MODEL, trace, time_scale=time_scale, ttft_slo_s=SLO)
    ok = [o for o in result.outcomes if o.status == "ok" and o.ttft is not None]
    ttft = np.array([o.ttft / time_scale for o in ok])
    e2e = np.array([o.e2e / time_scale for o in ok if o.e2e is not None])
    lost = result.summary().lost
    if lost:
        print(f"warning: {lost} requests lost in the live run")
    return ttft, e2e


def simulated(trace) -> tuple[np.ndarray, np.ndarray]:
    pools = load_catalogue().pools(MODEL, ["A10G", "L40S"])
    initial = {name: n for name, (_, _, n) in FLEET.items()}
    # the gateway learns its replicas' corrections (gateway.learn_profiles); so does this
    res = simulate(trace, pools, initial=initial, ttft_slo_s=SLO, learn_profiles=True)
    done = res.status == STATUSES.index("ok")
    return res.ttft[done], res.e2e[done]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=("emulator", "llama.cpp"), default="emulator")
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--rps", type=float, default=None)
    ap.add_argument("--time-scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--profile", type=Path, help="llama.cpp: a profile YAML to use, not measure")
    args = ap.parse_args()
    if args.engine == "llama.cpp":
        real_engine(args)
        return
    args.minutes = 10.0 if args.minutes is None else args.minutes
    args.rps = 2.0 if args.rps is None else args.rps
    trace = synthetic_trace(
        args.minutes * 60, args.rps, seed=args.seed, batch_fraction=0.0,
        prompt=LengthDist(256, 1.0, 16, 2048), output=LengthDist(64, 1.0, 8, 256),
    )  # fmt: skip
    s_ttft, s_e2e = simulated(trace)
    l_ttft, l_e2e = asyncio.run(live(trace, args.time_scale))
    table = Table(title=f"simulator vs live gateway: {len(trace)} requests, cost_slo, "
                        f"2x A10G spot + 1x L40S, time scale {args.time_scale}")  # fmt: skip
    for col in ("metric", "simulated", "live", "difference", "target", ""):
        table.add_column(col, justify="right")
    for name, s, li, target in (
        ("TTFT p50", s_ttft, l_ttft, 0.15), ("TTFT p99", s_ttft, l_ttft, 0.15),
        ("e2e p50", s_e2e, l_e2e, None), ("e2e p99", s_e2e, l_e2e, None),
    ):  # fmt: skip
        q = 50 if "p50" in name else 99
        a, b = float(np.percentile(s, q)), float(np.percentile(li, q))
        diff = (a - b) / b
        verdict = "" if target is None else ("PASS" if abs(diff) <= target else "MISS")
        table.add_row(name, f"{a:.3f} s", f"{b:.3f} s", f"{diff:+.1%}",
                      "" if target is None else f"±{target:.0%}", verdict)  # fmt: skip
    Console(width=120).print(table)


# -- against a real engine -----------------------------------------------------------------------
LLAMA_POOL = "cpu"
LLAMA_SLO = 2.0


def _spec_of(path: Path | None, url: str) -> tuple[ProfileSpec, str]:
    if path is not None:
        raw = yaml.safe_load(path.read_text())["profiles"]
        entry = next(iter(next(iter(raw.values())).values()))
        return ProfileSpec.model_validate(entry), f"from {path}"
    measured = asyncio.run(
        Profiler(url, LLAMA_MODEL).measure(
            "cpu-1t", prompts=(32, 96, 192, 384), batches=(1, 2, 4, 8), repeats=2
        )
    )
    text = profile_yaml(measured)
    entry = yaml.safe_load(text)["profiles"][LLAMA_MODEL]["cpu-1t"]
    print(text)
    return ProfileSpec.model_validate(entry), "measured now"


async def _live_llama(trace, path: Path | None):
    engine = llamacpp.find()
    if engine is None:
        raise SystemExit(llamacpp.missing())
    async with Supervisor() as sup:
        urls = await sup.llama_servers(2, engine)
        spec, where = await asyncio.to_thread(_spec_of, path, urls[0])
        pool = {
            "name": LLAMA_POOL, "model": LLAMA_MODEL, "accelerator": "cpu-1t",
            "price_per_hour": 0.05, "engine": "llama.cpp", "replicas": urls,
            "profile": spec.model_dump(),
        }  # fmt: skip
        gw = {"router": "cost_slo", "time_scale": 1.0, "ttft_slo_s": LLAMA_SLO}
        with tempfile.TemporaryDirectory() as tmp:
            url = await sup.gateway({"gateway": gw, "pools": [pool]}, Path(tmp))
            with OtherLoad(ours=("llama-server",)) as load:
                result = await replay(
                    url, LLAMA_MODEL, trace, time_scale=1.0, ttft_slo_s=LLAMA_SLO, words=False,
                    extra_body={"ignore_eos": True},
                )  # fmt: skip
    return result, spec, where, load


def real_engine(args) -> None:
    minutes = 4.0 if args.minutes is None else args.minutes
    rps = 0.6 if args.rps is None else args.rps
    trace = synthetic_trace(
        minutes * 60, rps, seed=args.seed, batch_fraction=0.0,
        prompt=LengthDist(48, 0.8, 8, 256), output=LengthDist(32, 0.6, 8, 96),
    )  # fmt: skip
    result, spec, where, load = asyncio.run(_live_llama(trace, args.profile))
    outcomes = result.outcomes
    ok = [o for o in outcomes if o.status == "ok" and o.ttft is not None and o.prompt_usage]
    s = result.summary()
    if s.lost or s.shed:
        print(f"live run: {s.lost} lost, {s.shed} shed of {s.requests}")
    # the simulator replays the same requests, with the token counts the engine reported
    replayed = [
        TraceRequest(arrival=trace[o.index].arrival,
                     prompt_tokens=int(o.prompt_usage or 0) - o.prompt_cached,
                     max_tokens=int(o.usage_tokens or trace[o.index].max_tokens))
        for o in ok
    ]  # fmt: skip
    profile = spec.build(LLAMA_MODEL, "cpu-1t")
    offering = Offering("cpu-1t-on_demand", "cpu-1t", CapacityClass.ON_DEMAND, 0.05)
    pool = Pool(LLAMA_POOL, LLAMA_MODEL, offering, 2, profile)
    res = simulate(replayed, [pool], ttft_slo_s=LLAMA_SLO, learn_profiles=True)
    done = res.status == STATUSES.index("ok")
    s_ttft, s_e2e = res.ttft, res.e2e
    l_ttft = np.array([o.ttft for o in ok])
    l_e2e = np.array([o.e2e for o in ok])
    prompts = np.array([r.prompt_tokens for r in replayed])
    console = Console(width=130)
    table = Table(
        title=f"simulator vs live gateway on 2 llama.cpp replicas (SmolLM2-135M, -t 1): "
        f"{len(ok)} of {len(trace)} requests, {rps:g} req/s, profile {where}"
    )
    for col in ("metric", "simulated", "live", "difference", "target", ""):
        table.add_column(col, justify="right")
    for name, a_all, b_all in (
        ("TTFT p50", s_ttft, l_ttft), ("TTFT p99", s_ttft, l_ttft),
        ("e2e p50", s_e2e, l_e2e), ("e2e p99", s_e2e, l_e2e),
    ):  # fmt: skip
        q = 50 if "p50" in name else 99
        a = float(np.percentile(a_all[done], q))
        b = float(np.percentile(b_all[done], q))
        diff = (a - b) / b
        verdict = "PASS" if abs(diff) <= 0.15 else "MISS"
        if load.busy:
            verdict += " (busy)"
        table.add_row(name, f"{a:.3f} s", f"{b:.3f} s", f"{diff:+.1%}", "±15%", verdict)
    console.print(table)
    buckets = Table(
        title="by prompt size (tokens the engine computed): p50 and p99, simulated / live"
    )
    for col in ("prompt tokens", "requests", "TTFT p50", "TTFT p99", "e2e p50", "e2e p99"):
        buckets.add_column(col, justify="right")
    edges = [0, 64, 128, 256, 10**9]
    for lo, hi in itertools.pairwise(edges):
        sel = done & (prompts >= lo) & (prompts < hi)
        if not sel.any():
            continue
        cells = []
        for sim_v, live_v in ((s_ttft, l_ttft), (s_e2e, l_e2e)):
            for q in (50, 99):
                a, b = float(np.percentile(sim_v[sel], q)), float(np.percentile(live_v[sel], q))
                cells.append(f"{a:.2f} / {b:.2f} ({(a - b) / b:+.0%})")
        label = f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"
        buckets.add_row(label, str(int(sel.sum())), *cells)
    console.print(buckets)
    console.print(load.line())


if __name__ == "__main__":
    main()
