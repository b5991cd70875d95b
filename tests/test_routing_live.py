"""Routing policies compared live: the same trace through the real gateway over emulators.

A fleet of cheap-slow (A10G spot) and fast-expensive (H100 on-demand) replicas, a 0.6 s TTFT
target and heavy-tailed prompts: long prompts cannot start in time on an A10G even when it is
idle.  The fleet runs at half speed (time scale 0.5) so the harness's own loopback overhead stays
small beside the target.  ``cost_slo``
must meet the TTFT target for more requests than ``round_robin`` (which overloads the slow
replicas) and spend less than ``least_load`` (which keeps the expensive replica busy with work
the cheap ones could do in time).
"""

from __future__ import annotations

import aiohttp

from fleetpilot.core.workload import LengthDist, synthetic_trace
from fleetpilot.loadgen import replay

from conftest import Emulators, fleet, metric, serve_gateway

MODEL = "llama-3.1-8b"
SCALE = 0.5  # two modelled seconds per real second
SLO = 0.6


async def run_policy(urls: dict[str, list[str]], router: str) -> tuple[float, float, int]:
    cfg = fleet(
        [
            {
                "name": "a10g-spot",
                "model": MODEL,
                "accelerator": "A10G",
                "capacity_class": "spot",
                "replicas": urls["A10G"],
            },
            {
                "name": "h100-od",
                "model": MODEL,
                "accelerator": "H100",
                "capacity_class": "on_demand",
                "replicas": urls["H100"],
            },
        ],
        router=router,
        time_scale=SCALE,
        ttft_slo_s=SLO,
        shed_factor=1e9,  # compare placement, not shedding
    )
    trace = synthetic_trace(
        30.0, 4.0, seed=11, batch_fraction=0.0, burst_rate_per_period=0,
        output=LengthDist(median=24, sigma=0.8, low=4, high=96),
    )  # fmt: skip
    async with serve_gateway(cfg) as gw:
        result = await replay(gw.url, MODEL, trace, time_scale=SCALE, ttft_slo_s=SLO)
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            text = await r.text()
    summary = result.summary()
    spent = metric(text, "fleetpilot_cost_dollars_total")
    return summary.slo_attainment, spent, summary.lost


async def test_cost_slo_beats_round_robin_on_slo_and_least_load_on_cost(
    emulators: Emulators,
) -> None:
    urls = {
        "A10G": [emulators.start("A10G", time_scale=SCALE).url for _ in range(2)],
        "H100": [emulators.start("H100", time_scale=SCALE).url],
    }
    results = {
        name: await run_policy(urls, name) for name in ("cost_slo", "round_robin", "least_load")
    }
    for name, (_, _, lost) in results.items():
        assert lost == 0, name
    slo, cost = {n: r[0] for n, r in results.items()}, {n: r[1] for n, r in results.items()}
    assert slo["cost_slo"] > slo["round_robin"], results
    assert cost["cost_slo"] < cost["least_load"], results
