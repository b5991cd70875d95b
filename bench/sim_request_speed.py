"""Speed of the request-level simulator, in simulated requests per second of one core.

Two traces: a synthetic one (~20k requests at ~5 rps on 2x A10G spot + 1x L40S on-demand,
llama-3.1-8b, two spot pre-emptions) and, when ../shared/data is present, the Azure LLM
inference conversation trace (19,366 requests, ~1 h) on a fleet sized for it.

Baseline measured in the same run: the *routing floor*, the time to call the real
``cost_slo`` policy once per request on a snapshot of the same fleet, with nothing simulated.
The simulator calls that policy on every arrival, so the floor bounds how fast it can get.
Times are process CPU time (``time.process_time``; build machines are shared), best of
``--repeat`` runs.  Target (issue 3): >= 50,000 simulated requests/s.

    .venv/bin/python bench/sim_request_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.model import Pool, Replica, Request, Snapshot
from fleetpilot.core.routing import DEFAULT_PARAMS, cost_slo
from fleetpilot.core.workload import TraceRequest, synthetic_trace
from fleetpilot.sim.request_level import SimResult, simulate
from fleetpilot.traces import load_azure

MODEL = "llama-3.1-8b"
SERVEGEN = Path(__file__).resolve().parents[2] / "shared/data/alibaba-servegen/language/m-large"
AZURE = (
    Path(__file__).resolve().parents[2]
    / "shared/data/azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv"
)


def routing_floor(
    trace: tuple[TraceRequest, ...], pools: tuple[Pool, ...], initial: dict[str, int]
) -> float:
    """CPU seconds to route every request of ``trace`` once with cost_slo (no simulation)."""
    reps = tuple(
        Replica(f"{p.name}/{i}", p.name, MODEL, "sim://", p.offering, p.profile)  # type: ignore[arg-type]
        for p in pools
        for i in range(initial.get(p.name, 0))
    )
    t0 = time.process_time()
    for n, tr in enumerate(trace):
        req = Request(MODEL, tr.prompt_tokens, tr.max_tokens, tr.arrival + 2.0, arrival=tr.arrival)
        cost_slo(req, Snapshot(tr.arrival, reps, tick=n), DEFAULT_PARAMS)
    return time.process_time() - t0


def fingerprint(res: SimResult) -> str:
    arrays = [res.arrival, res.ttft, res.e2e, res.status, res.pool, res.output_tokens]
    return json.dumps([res.summary(), [a.tolist() for a in arrays]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cat = load_catalogue()
    pools = cat.pools(MODEL, ["A10G", "L40S"])
    cases = [
        (
            "synthetic 4000 s @ 5 rps, 2x A10G spot + 1x L40S",
            synthetic_trace(4000, 5.0, seed=1),
            {"A10G-spot": 2, "L40S-on_demand": 1},
            {"A10G-spot": [1000.0, 2500.0]},
        )
    ]
    if AZURE.exists():
        cases.append(
            (
                "Azure conversation 2023, 4x A10G spot + 4x L40S",
                load_azure(AZURE),
                {"A10G-spot": 4, "L40S-on_demand": 2, "L40S-spot": 2},
                {"A10G-spot": [900.0], "L40S-spot": [1800.0]},
            )
        )
    table = Table(title="request-level simulator speed (one core, CPU time)")
    for col in ("trace", "requests", "sim s", "sim req/s", "routing floor req/s", "target", ""):
        table.add_column(col, justify="right" if col not in ("trace", "") else "left")
    for name, trace, initial, pre in cases:
        best = float("inf")
        prints = set()
        for _ in range(args.repeat):
            t0 = time.process_time()
            res = simulate(trace, pools, initial=initial, preemptions=pre)
            best = min(best, time.process_time() - t0)
            prints.add(fingerprint(res))
        floor = min(routing_floor(trace, pools, initial) for _ in range(args.repeat))
        s = res.summary()
        rate = len(trace) / best
        print(
            f"{name}: ok {s['ok']} shed {s['shed']} lost {s['lost']} "
            f"preemptions {s['preemptions']} continued {s['continued']}; "
            f"p99 TTFT {s['ttft_p99']:.3f}s; SLO attainment {s['slo_attainment']:.3f}; "
            f"repeat runs identical: {len(prints) == 1}"
        )
        table.add_row(
            name,
            str(len(trace)),
            f"{best:.3f}",
            f"{rate:,.0f}",
            f"{len(trace) / floor:,.0f}",
            "50,000",
            "PASS" if rate >= 50_000 else "MISS",
        )
    Console(width=140).print(table)
    if SERVEGEN.exists():
        window_level(args.repeat)


def window_level(repeat: int) -> None:
    """The 14-day ServeGen m-large series in window mode: load + each policy + the optimum."""
    from fleetpilot.core.capacity import PlanParams
    from fleetpilot.core.policies import CAPACITY_POLICIES
    from fleetpilot.sim.fluid import simulate as simulate_fluid
    from fleetpilot.sim.optimum import offline_optimum
    from fleetpilot.traces import load_servegen

    t0 = time.perf_counter()
    series = load_servegen(SERVEGEN)
    load_s = time.perf_counter() - t0
    pools = load_catalogue().pools(MODEL)
    params = PlanParams()
    days = series.duration_s / 86400
    title = f"window level: ServeGen m-large, {len(series.rps)} windows ({days:.0f} days), 10 pools"
    table = Table(title=title)
    for col in ("step", "wall s (best)", "target"):
        table.add_column(col, justify="right")
    table.add_row("load the series", f"{load_s:.2f}", "")
    total = load_s
    for name, policy in CAPACITY_POLICIES.items():
        best = min(
            _timed(lambda p=policy: simulate_fluid(series, pools, p, params)) for _ in range(repeat)
        )
        total += best
        table.add_row(name, f"{best:.2f}", "")
    best = min(_timed(lambda: offline_optimum(series, pools, params)) for _ in range(repeat))
    total += best
    table.add_row("offline optimum", f"{best:.2f}", "")
    table.add_row(
        "all of the above", f"{total:.2f}", f"< 30 s per run: {'PASS' if total < 30 else 'MISS'}"
    )
    Console(width=140).print(table)


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
