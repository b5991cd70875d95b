"""Tenants, keys, budgets and limits through a live gateway: the official ``openai`` client
over loopback, real emulator processes, the memory and SQLite stores."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import openai
import pytest

from fleetpilot.config import FleetConfig
from fleetpilot.gateway.server import TENANCY
from fleetpilot.tenancy import ledger

from conftest import Emulators, serve_gateway

MODEL = "llama-3.1-8b"
TOKEN = "admin-token-for-tenancy-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MSGS = [{"role": "user", "content": "hello there"}]


def config(urls: list[str], store: str, **tenancy: Any) -> FleetConfig:
    return FleetConfig.model_validate(
        {
            "gateway": {"health_interval_s": 0.2, "admin_token": TOKEN},
            "pools": [{"name": "a10g", "model": MODEL, "accelerator": "A10G", "replicas": urls}],
            "store": {"url": store},
            "tenancy": tenancy,
        }
    )


async def admin(url: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession(headers=ADMIN) as s,
        s.request(method, url + path, json=body) as r,
    ):
        data = await r.json()
        assert r.status < 300, data
        return data


def client(gw_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw_url + "/v1", api_key=key, max_retries=0)


async def settled(gw: Any) -> None:
    """Wait for the settlements the gateway has in flight (they run after the answer)."""
    await asyncio.sleep(0.05)
    await gw.app[TENANCY].admission.drain()


async def test_two_tenants_one_runs_into_its_budget_the_other_does_not(
    emulators: Emulators,
) -> None:
    emu = emulators.start()
    tenants = [{"name": "small", "budgets": [{"usd": 0.0004, "period": "day"}]},
               {"name": "big", "budgets": [{"usd": 100.0, "period": "month"}]}]  # fmt: skip
    async with serve_gateway(config([emu.url], "memory://", tenants=tenants)) as gw:
        anon = client(gw.url, "anything")
        assert (await anon.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)).usage
        small = (await admin(gw.url, "POST", "/admin/keys", {"tenant": "small"}))["key"]
        big = (await admin(gw.url, "POST", "/admin/keys", {"tenant": "big", "name": "ci"}))["key"]
        await asyncio.sleep(0.4)  # the directory's refresh
        with pytest.raises(openai.AuthenticationError):  # the first key ends anonymity
            await anon.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
        listing = await admin(gw.url, "GET", "/admin/keys")
        assert {k["tenant"] for k in listing["keys"]} == {"small", "big"}
        assert small not in str(listing) and big not in str(listing)

        a, b = client(gw.url, small), client(gw.url, big)
        served = 0
        with pytest.raises(openai.RateLimitError) as refused:
            for _ in range(100):
                await a.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=40)
                served += 1
        err = refused.value
        assert err.status_code == 429 and err.code == "insufficient_quota"
        assert "tenant 'small' budget of $0.0004 per day" in err.message
        assert 3 <= served < 100
        for _ in range(5):  # the other tenant is unaffected
            assert await b.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=40)
        await settled(gw)

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {small}"}) as s:
            async with s.get(gw.url + "/v1/usage") as r:
                mine = await r.json()
            async with s.get(gw.url + "/admin/spend") as r:
                assert r.status == 401  # a tenant's key is not the admin credential
        assert mine["tenant"] == "small"
        assert sum(row["requests"] for row in mine["rows"]) == served
        (budget,) = mine["budgets"]
        assert budget["committed_usd"] <= 0.0004 + 1e-12
        spend = await admin(gw.url, "GET", "/admin/spend?by=tenant")
        by_tenant = {row["tenant"]: row for row in spend["rows"]}
        assert by_tenant["small"]["requests"] == served
        assert by_tenant["big"]["requests"] == 5 and by_tenant["default"]["requests"] == 1
        assert by_tenant["small"]["usd"] == pytest.approx(budget["committed_usd"])
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            text = await r.text()
        assert 'fleetpilot_tenant_refused_total{reason="budget",tenant="small"} 1.0' in text
        assert small not in text and big not in text


async def test_streams_settle_from_their_usage_even_when_the_client_leaves(
    emulators: Emulators,
) -> None:
    emu = emulators.start()
    tenants = [{"name": "t", "budgets": [{"usd": 1.0, "period": "total"}]}]
    async with serve_gateway(config([emu.url], "memory://", tenants=tenants)) as gw:
        key = (await admin(gw.url, "POST", "/admin/keys", {"tenant": "t"}))["key"]
        await asyncio.sleep(0.4)
        c = client(gw.url, key)
        stream = await c.chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=12, stream=True
        )  # no include_usage: the gateway asks the replica for it all the same
        chunks = [ch async for ch in stream]
        assert not any(ch.usage for ch in chunks)
        stream = await c.chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=400, stream=True
        )
        got = 0
        async for ch in stream:
            got += bool(ch.choices and ch.choices[0].delta.content)
            if got == 5:
                break
        await stream.close()  # the client leaves mid-stream
        await asyncio.sleep(0.3)
        await settled(gw)
        store = gw.app[TENANCY].store
        rows = [r async for r in ledger.entries(store)]
        assert rows[0]["completion_tokens"] == 12
        assert 5 <= rows[1]["completion_tokens"] < 400  # charged for what it was sent
        assert await store.value("b:t:t:all") == pytest.approx(sum(r["usd"] for r in rows))


async def test_limits_send_openai_headers_and_retry_after(emulators: Emulators) -> None:
    emu = emulators.start()
    tenants = [{"name": "t", "limits": {"rpm": 3}}]
    async with serve_gateway(config([emu.url], "memory://", tenants=tenants)) as gw:
        key = (await admin(gw.url, "POST", "/admin/keys", {"tenant": "t"}))["key"]
        await asyncio.sleep(0.4)
        c = client(gw.url, key)
        raw = await c.chat.completions.with_raw_response.create(
            model=MODEL, messages=MSGS, max_tokens=2
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == "2"
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        stream = await c.chat.completions.with_raw_response.create(
            model=MODEL, messages=MSGS, max_tokens=2, stream=True
        )
        assert stream.headers["x-ratelimit-remaining-requests"] == "1"
        async for _ in stream.parse():
            pass
        await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as refused:
            await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
        assert refused.value.code == "rate_limit_exceeded"
        assert 1 <= int(refused.value.response.headers["retry-after"]) <= 61


async def test_a_revoked_key_is_refused_within_a_second_and_no_key_is_logged(
    emulators: Emulators, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emu = emulators.start()
    async with serve_gateway(config([emu.url], "memory://", tenants=[{"name": "t"}])) as gw:
        made = await admin(gw.url, "POST", "/admin/keys", {"tenant": "t"})
        key = made["key"]
        await asyncio.sleep(0.4)
        c = client(gw.url, key)
        await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            await client(gw.url, key + "x").chat.completions.create(
                model=MODEL, messages=MSGS, max_tokens=2
            )
        rotated = await admin(gw.url, "POST", f"/admin/keys/{made['id']}/rotate")
        t0 = asyncio.get_running_loop().time()
        while True:
            try:
                await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
            except openai.AuthenticationError as exc:
                assert "revoked" in exc.message
                break
            await asyncio.sleep(0.02)
        assert asyncio.get_running_loop().time() - t0 < 1.0
        await client(gw.url, rotated["key"]).chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=2
        )
    secrets = (key, key.split(".", 1)[1], rotated["key"].split(".", 1)[1])
    assert not any(s in caplog.text for s in secrets)


async def test_the_sqlite_store_keeps_a_budget_under_2000_concurrent_requests(
    emulators: Emulators, tmp_path: Any
) -> None:
    """The fleet proof's budget test with the embedded store and one gateway."""
    emus = [emulators.start(), emulators.start()]
    url = f"sqlite://{tmp_path}/fleet.db"
    cfg = config([e.url for e in emus], url, tenants=[{"name": "probe"}])
    cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"shed_factor": 1e9})})
    async with serve_gateway(cfg) as gw:
        probe = (await admin(gw.url, "POST", "/admin/keys", {"tenant": "probe"}))["key"]
        await asyncio.sleep(0.4)
        await _call(client(gw.url, probe), False)
        await settled(gw)
        store = gw.app[TENANCY].store
        (first,) = [r async for r in ledger.entries(store, tenant="probe")]
        per_request = first["usd"]
        budget = 1000 * per_request  # about half of 2,000
        await admin(gw.url, "POST", "/admin/tenants",
                    {"name": "t", "budgets": [{"usd": budget, "period": "total"}]})  # fmt: skip
        key = (await admin(gw.url, "POST", "/admin/keys", {"tenant": "t"}))["key"]
        await asyncio.sleep(0.4)
        c = client(gw.url, key)
        served, errors = 0, []

        async def worker(i: int) -> None:
            nonlocal served
            while True:
                try:
                    await _call(c, i % 2 == 1)
                    served += 1
                except openai.RateLimitError as exc:
                    assert exc.code == "insufficient_quota", exc.message
                    return
                except Exception as exc:
                    errors.append(repr(exc)[:200])
                    return

        await asyncio.gather(*(worker(i) for i in range(2000)))
        assert not errors, errors[:3]
        await settled(gw)
        # now one at a time until refused: nothing in flight, so what is left is less than
        # one request's worst case
        while True:
            try:
                await _call(c, False)
                served += 1
            except openai.RateLimitError:
                break
        await settled(gw)
        rows = [r async for r in ledger.entries(store, tenant="t")]
        spent = sum(r["usd"] for r in rows)
        worst = gw.app[TENANCY].prices.worst_case(MODEL, 512, 1, 20)  # a bound on one hold
        print(f"\nSQLite, 1 gateway: budget ${budget:.6f}; {served} served of 2,000 workers; "
              f"settled ${spent:.6f} = {spent / budget:.4%}; left ${budget - spent:.8f} "
              f"(worst case ${worst:.8f})")  # fmt: skip
        assert len(rows) == served
        assert spent <= budget + 1e-12
        assert spent >= budget - worst
        assert await store.value("b:t:t:all") == pytest.approx(spent, rel=1e-9)


async def _call(c: openai.AsyncOpenAI, stream: bool) -> int:
    if stream:
        s = await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20, stream=True)
        return sum([1 async for _ in s])
    r = await c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20)
    return r.usage.completion_tokens if r.usage else 0
