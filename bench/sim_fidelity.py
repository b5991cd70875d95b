"""Fidelity: the same short trace through the simulator and live through the real gateway.

Live: emulator processes (``fleetpilot emulate``) run the perf model in compressed real time,
the real gateway routes with ``cost_slo``, and the official openai client replays the trace
open-loop.  Simulated: :func:`fleetpilot.sim.request_level.simulate` with the same fleet,
router and trace.  Printed: TTFT and end-to-end p50/p99 of both and the relative difference;
target (issue 3): p50 and p99 TTFT within 15%.

    .venv/bin/python bench/sim_fidelity.py [--minutes 10] [--rps 2] [--time-scale 0.5]

The live side's loopback and client overhead is real time; at ``--time-scale s`` it shows up
multiplied by ``1/s`` in modelled seconds, so a smaller scale makes the live run faster and
less faithful.  The default 0.5 keeps that overhead a few tens of modelled milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.workload import LengthDist, synthetic_trace
from fleetpilot.loadgen import replay
from fleetpilot.procs import Supervisor, fleetpilot_command, free_port
from fleetpilot.sim.request_level import STATUSES, simulate

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
    res = simulate(trace, pools, initial=initial, ttft_slo_s=SLO)
    done = res.status == STATUSES.index("ok")
    return res.ttft[done], res.e2e[done]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rps", type=float, default=2.0)
    ap.add_argument("--time-scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
