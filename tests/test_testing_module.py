"""``fleetpilot.testing`` gives users a working emulator and gateway in their own loop."""

from __future__ import annotations

import openai

from fleetpilot.config import FleetConfig
from fleetpilot.testing import EmulatorOptions, create_app, start_emulator


async def test_public_fakes_compose_into_a_working_fleet() -> None:
    from aiohttp import web

    async with await start_emulator(
        EmulatorOptions(model="llama-3.1-8b", accelerator="H100", port=0, time_scale=0.05)
    ) as emu:
        cfg = FleetConfig.model_validate(
            {
                "pools": [
                    {
                        "name": "p",
                        "model": "llama-3.1-8b",
                        "accelerator": "H100",
                        "replicas": [emu.url],
                    }
                ]
            }
        )
        runner = web.AppRunner(create_app(cfg, health_checks=False))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        try:
            client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
            r = await client.completions.create(model="llama-3.1-8b", prompt="hi", max_tokens=3)
            assert r.choices[0].text == " tok0 tok1 tok2"
            await client.close()
        finally:
            await runner.cleanup()
