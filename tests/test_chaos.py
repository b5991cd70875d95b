"""Chaos: 150 concurrent streams through the gateway (its own process, as users run it) over
three emulated replicas, read with the official ``openai`` client.  The busiest replica is
killed (SIGKILL), then the busiest survivor is frozen (SIGSTOP): every stream must still
complete with exactly the tokens an uninterrupted run gives.  Nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import openai
import pytest

from conftest import Emulators, fleet, gateway_process, metric

MODEL = "llama-3.1-8b"
TOKEN = "chaos-admin"
STREAMS, TOKENS = 150, 300


def words(n: int) -> str:
    return "".join(f" tok{i}" for i in range(n))


async def _fleet_view(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(url + "/admin/fleet", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        r.raise_for_status()
        return list((await r.json())["replicas"])


@pytest.mark.timeout(300)
def test_chaos_kill_then_freeze_under_150_streams_loses_nothing(
    emulators: Emulators, tmp_path: Any
) -> None:
    scale = 0.1
    emus = [emulators.start("A10G", time_scale=scale) for _ in range(3)]
    cfg = fleet(
        [{"name": "p", "model": MODEL, "accelerator": "A10G", "replicas": [e.url for e in emus]}],
        time_scale=scale,
        first_byte_timeout_s=2.0,  # a frozen replica's silence is noticed after 2 real seconds
        max_continuations=4,
        admin_token=TOKEN,
    )
    by_url = {e.url: e for e in emus}
    frozen: list[int] = []

    async def run(url: str) -> tuple[list[Any], float]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        progress = [0] * STREAMS

        async def one(i: int) -> str:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"tell me story number {i}"}],
                max_tokens=TOKENS,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-fleetpilot-ttft-slo": "600"},  # queueing is fine, not shedding
            )
            text, usage = "", None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    progress[i] += 1
                if chunk.usage:
                    usage = chunk.usage
            assert usage is not None and usage.completion_tokens == TOKENS, usage
            return text

        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(one(i)) for i in range(STREAMS)]
            while sum(1 for p in progress if p >= 20) < 30:  # a first batch is well under way
                await asyncio.sleep(0.05)
            rows = await _fleet_view(session, url)
            victim = max(rows, key=lambda r: r["in_flight"])
            assert victim["in_flight"] > 0
            by_url[victim["url"]].kill()
            await asyncio.sleep(1.0)  # continuations land on the survivors
            rows = [r for r in await _fleet_view(session, url) if r["id"] != victim["id"]]
            chill = max(rows, key=lambda r: r["in_flight"])
            pid = by_url[chill["url"]].proc.pid
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)
            t0 = time.monotonic()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            elapsed = time.monotonic() - t0
            async with session.get(url + "/metrics") as r:
                text = await r.text()
        await client.close()
        continued = metric(text, "fleetpilot_continuations_total")
        assert continued > 0
        return results, elapsed

    try:
        with gateway_process(cfg, tmp_path) as gw:
            results, _ = asyncio.run(run(gw.url))
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
    lost = [r for r in results if r != words(TOKENS)]
    assert len(lost) == 0, (len(lost), lost[:3])
