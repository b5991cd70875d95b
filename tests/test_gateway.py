"""The gateway over loopback, in front of real emulator processes, driven by the openai client."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from fleetpilot.gateway.server import FLEET, PROXY
from fleetpilot.tokens import estimate_tokens

from conftest import Emulators, fleet, free_port, metric, serve_gateway

MODEL = "llama-3.1-8b"


def pool(name: str, urls: list[str], acc: str = "A10G", cls: str = "on_demand", **kw: object):
    return {"name": name, "model": MODEL, "accelerator": acc, "capacity_class": cls,
            "replicas": urls, **kw}  # fmt: skip


def words(n: int, start: int = 0) -> str:
    return "".join(f" tok{i}" for i in range(start, start + n))


async def test_openai_clients_chat_completions_streaming_and_not(emulators: Emulators) -> None:
    emu = emulators.start("A10G")
    async with serve_gateway(fleet([pool("p", [emu.url])])) as gw:
        aclient = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "say something please"}]
        chat = await aclient.chat.completions.create(model=MODEL, messages=msgs, max_tokens=7)
        assert chat.choices[0].message.content == words(7)
        assert chat.usage is not None and chat.usage.completion_tokens == 7
        assert chat.usage.prompt_tokens == estimate_tokens("say something please")

        stream = await aclient.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=9, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        text, usage, ids = "", None, set()
        async for chunk in stream:
            ids.add(chunk.id)
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text == words(9)
        assert usage is not None and usage.completion_tokens == 9 and len(ids) == 1

        comp = await aclient.completions.create(model=MODEL, prompt="once upon", max_tokens=4)
        assert comp.choices[0].text == words(4)
        pieces = [
            c.choices[0].text
            async for c in await aclient.completions.create(
                model=MODEL, prompt="once upon", max_tokens=5, stream=True
            )
            if c.choices
        ]
        assert "".join(pieces) == words(5)

        models = await aclient.models.list()
        assert [m.id for m in models.data] == [MODEL]
        emb = await aclient.embeddings.create(model=MODEL, input=["a", "b"])
        assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
        await aclient.close()

        # the sync client, in a thread so this loop keeps serving
        def sync_calls() -> tuple[str, str]:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
            one = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3)
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model=MODEL, messages=msgs, max_tokens=3, stream=True
                )
                if c.choices
            )
            client.close()
            return one.choices[0].message.content or "", streamed

        one, streamed = await asyncio.to_thread(sync_calls)
        assert one == streamed == words(3)

        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            text = await r.text()
        assert metric(text, "fleetpilot_requests_total", model=MODEL, status="200") >= 7
        assert metric(text, "fleetpilot_cost_dollars_total", pool="p") > 0
        assert metric(text, "fleetpilot_ttft_seconds_count", model=MODEL) >= 3
        assert (
            metric(text, "fleetpilot_tokens_total", pool="p", kind="completion")
            == 7 + 9 + 4 + 5 + 3 + 3
        )


async def test_bad_input_gets_openai_shaped_errors(emulators: Emulators) -> None:
    emu = emulators.start("A10G")
    cfg = fleet([pool("p", [emu.url])], max_body_bytes=4096)
    async with serve_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = gw.url + "/v1/chat/completions"

        async def post(data: bytes, **headers: str) -> tuple[int, dict, dict]:
            async with s.post(
                url, data=data, headers={"Content-Type": "application/json", **headers}
            ) as r:
                return r.status, await r.json(), dict(r.headers)

        ok_body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        cases = [
            (b"{not json", 400),
            (b"\xff\xfe{}", 400),
            (b"[1, 2]", 400),
            (json.dumps({**ok_body, "max_tokens": "many"}).encode(), 400),
            (json.dumps({**ok_body, "messages": "hi"}).encode(), 400),
            (json.dumps({**ok_body, "stream": "yes"}).encode(), 400),
            (json.dumps({**ok_body, "model": "gpt-nope"}).encode(), 404),
            (
                json.dumps(
                    {**ok_body, "messages": [{"role": "user", "content": "x" * 5000}]}
                ).encode(),
                413,
            ),
        ]
        for data, status in cases:
            got, body, _ = await post(data)
            assert got == status, (data[:40], body)
            err = body["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"]
        # invalid UTF-8 inside a JSON string
        got, body, _ = await post(
            b'{"model": "'
            + MODEL.encode()
            + b'", "messages": [{"role": "user", "content": "\xc3\x28"}]}'
        )
        assert got == 400
        # unknown route
        async with s.get(gw.url + "/v1/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
        # shed: a TTFT target no replica can meet by a wide margin (the tightest a client may
        # ask for, on a prompt whose prefill alone takes several times that)
        long_body = {**ok_body, "messages": [{"role": "user", "content": "x" * 3800}]}
        got, body, headers = await post(
            json.dumps(long_body).encode(), **{"x-fleetpilot-ttft-slo": "0.05"}
        )
        assert got == 429 and body["error"]["code"] == "overloaded"
        assert int(headers["Retry-After"]) >= 1
        # the gateway is still fine
        got, body, _ = await post(json.dumps(ok_body).encode())
        assert got == 200 and body["choices"][0]["message"]["content"] == words(2)


async def test_503_when_no_replica_can_serve_or_none_recovers_by_the_deadline(
    emulators: Emulators,
) -> None:
    emu = emulators.start("A10G")
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = fleet(
        [pool("p", [emu.url]), {**pool("q", [dead]), "model": "other-model", "profile": MODEL}]
    )
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with serve_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/admin/drain", json={"replica": emu.url}) as r:
            assert r.status == 200
        async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == "no_healthy_replica"
        async with s.post(gw.url + "/admin/undrain", json={"replica": emu.url}) as r:
            assert r.status == 200
        async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
        # the other model's only replica refuses connections: ejected, then the gateway waits
        # for it up to the deadline and answers 503, naming no replica
        other = {**body, "model": "other-model"}
        async with s.post(
            gw.url + "/v1/chat/completions", json=other, headers={"x-fleetpilot-ttft-slo": "0.6"}
        ) as r:
            assert r.status == 503, await r.text()
            err = (await r.json())["error"]
            assert err["code"] == "no_healthy_replica" and dead not in err["message"]


async def test_failures_before_first_byte_are_retried_elsewhere(emulators: Emulators) -> None:
    broken = emulators.start("L4", args=("--fault", "error500"))
    refusing = emulators.start("L4", args=("--fault", "refuse"))
    good = emulators.start("H100")
    # the broken replicas are the cheapest, so cost_slo tries them first
    cfg = fleet([
        pool("cheap", [broken.url, refusing.url], acc="L4", cls="spot"),
        pool("good", [good.url], acc="H100"),
    ], cooldown_s=50.0)  # fmt: skip
    async with serve_gateway(cfg, health_checks=False) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "hello there"}]
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=msgs, max_tokens=3
        )
        assert raw.headers["x-fleetpilot-replica"] == "good/0"
        assert int(raw.headers["x-fleetpilot-attempts"]) == 3
        assert raw.parse().choices[0].message.content == words(3)
        # both broken replicas are now ejected: the next request goes straight to the good one
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=msgs, max_tokens=3
        )
        assert int(raw.headers["x-fleetpilot-attempts"]) == 1
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            assert metric(await r.text(), "fleetpilot_retries_total", model=MODEL) == 2
        await client.close()


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_replica_dying_mid_stream_is_continued_seamlessly(
    emulators: Emulators, kind: str
) -> None:
    dying = emulators.start("A10G", args=("--fault", "die_after", "--die-after-tokens", "6"))
    spare = emulators.start("A10G")
    cfg = fleet([
        pool("cheap", [dying.url], price_per_hour=0.1),
        pool("dear", [spare.url], price_per_hour=10.0),
    ])  # fmt: skip
    async with serve_gateway(cfg) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        text, usage, ids = "", None, set()
        if kind == "chat":
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "tell me a story"}],
                max_tokens=20, stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            async for chunk in stream:
                ids.add(chunk.id)
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                usage = chunk.usage or usage
        else:
            stream = await client.completions.create(
                model=MODEL, prompt="tell me a story", max_tokens=20, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            async for chunk in stream:
                ids.add(chunk.id)
                if chunk.choices:
                    text += chunk.choices[0].text
                usage = chunk.usage or usage
        assert dying.proc.wait(5) != 0  # the replica really died
        assert text == words(20)  # every token, in order, none twice
        assert usage is not None and usage.completion_tokens == 20
        assert len(ids) == 1
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            assert metric(await r.text(), "fleetpilot_continuations_total", model=MODEL) == 1
        await client.close()


async def test_replica_killed_mid_stream_client_still_gets_every_token(
    emulators: Emulators,
) -> None:
    victim = emulators.start("L4", time_scale=0.5)
    spare = emulators.start("L4", time_scale=0.5)
    cfg = fleet([
        pool("cheap", [victim.url], acc="L4", price_per_hour=0.1),
        pool("dear", [spare.url], acc="L4", price_per_hour=10.0),
    ], time_scale=0.5)  # fmt: skip
    async with serve_gateway(cfg) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "go"}], max_tokens=30, stream=True
        )
        text, n = "", 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                n += 1
                if n == 5:
                    victim.kill()  # SIGKILL, mid-stream
        assert text == words(30)
        await client.close()


async def test_thousand_concurrent_requests_no_errors_no_leaks(emulators: Emulators) -> None:
    emus = [emulators.start(acc, time_scale=0.02) for acc in ("A100-80G", "H100", "L40S")]
    cfg = fleet([
        pool("a100", [emus[0].url], acc="A100-80G"),
        pool("h100", [emus[1].url], acc="H100"),
        pool("l40s", [emus[2].url], acc="L40S"),
    ], ttft_slo_s=1e6)  # fmt: skip
    async with serve_gateway(cfg) as gw:
        before = len(asyncio.all_tasks())
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)

        async def one(i: int) -> int:
            msgs = [{"role": "user", "content": f"request number {i}"}]
            if i % 2:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=msgs, max_tokens=8, stream=True
                )
                return len([c async for c in stream if c.choices and c.choices[0].delta.content])
            r = await client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8)
            return r.usage.completion_tokens if r.usage else -1

        results = await asyncio.gather(*(one(i) for i in range(1000)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        assert all(r == 8 for r in results)
        await client.close()
        await asyncio.sleep(0.3)

        assert all(r.in_flight == 0 and r.remaining_tokens == 0 for r in gw.app[FLEET].replicas)
        assert all(r.prompt_tokens_pending == 0 for r in gw.app[FLEET].replicas)
        assert len(asyncio.all_tasks()) <= before
        assert gw.app[PROXY].upstream.client.in_use == 0  # every upstream conn returned
        # the server holds no client connection any more
        assert gw.listening.connections == 0


async def test_router_headroom_learns_from_streamed_first_tokens(emulators: Emulators) -> None:
    emu = emulators.start("A10G")
    # The configured target is 1 µs, so every first token at it misses; shed_factor so high
    # that a request no replica can serve in time is still routed.
    cfg = fleet([pool("p", [emu.url])], shed_factor=1e6, ttft_slo_s=1e-6, min_ttft_slo_s=1e-6)
    async with serve_gateway(cfg) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "hello"}]

        async def stream(**headers: str) -> None:
            chunks = await client.chat.completions.create(
                model=MODEL, messages=msgs, max_tokens=3, stream=True, extra_headers=headers
            )
            async for _ in chunks:
                pass

        async def headroom() -> float:
            async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
                return metric(await r.text(), "fleetpilot_router_headroom", model=MODEL)

        params = gw.app[PROXY].params
        assert await headroom() == params.headroom  # nothing learnt yet
        for _ in range(5):  # at the configured target: every first token misses it
            await stream()
        missed = await headroom()
        assert missed == pytest.approx(params.headroom - 5 * params.headroom_step)
        await client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3)
        assert await headroom() == missed  # a non-streamed answer shows no first token
        for _ in range(4):  # a client's own 2 s target: met, but it teaches nothing
            await stream(**{"x-fleetpilot-ttft-slo": "2"})
        assert await headroom() == missed
        await client.close()
