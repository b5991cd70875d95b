"""Tenancy's rules alone, on the memory store and a manual clock: keys, admission (limits and
budgets in one multi-add), settlement with its ledger record, and the store-outage policy
(against a real Redis client pointed at a port nothing listens on)."""

from __future__ import annotations

import calendar
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fleetpilot.clock import ManualClock
from fleetpilot.errors import (
    ModelNotFound,
    QuotaExceeded,
    RateLimited,
    SpendCapReached,
    StoreDown,
    Unauthorized,
)
from fleetpilot.store import Entry, MemoryStore, open_store
from fleetpilot.tenancy import ledger, registry
from fleetpilot.tenancy.admission import LEDGER, Admission, TenancyMetrics, period_label
from fleetpilot.tenancy.model import Budget, Limits, Period, TenancyConfig, Tenant
from fleetpilot.tenancy.registry import Directory, Principal

from conftest import free_port

NOON = calendar.timegm((2026, 12, 1, 12, 0, 0))
USAGE = {"prompt_tokens": 10, "completion_tokens": 20}


def admission(store: MemoryStore, clock: ManualClock, **cfg: object) -> Admission:
    metrics = TenancyMetrics(CollectorRegistry())
    return Admission(store, TenancyConfig.model_validate(cfg), metrics, clock=clock)


def test_budget_periods_are_utc_days_and_calendar_months() -> None:
    assert period_label(Period.DAY, NOON) == ("d2026-12-01", 12 * 3600)
    label, left = period_label(Period.MONTH, NOON)
    assert label == "m2026-12" and left == calendar.timegm((2027, 1, 1, 0, 0, 0)) - NOON
    assert period_label(Period.TOTAL, NOON) == ("all", None)


async def test_keys_are_salted_revocable_rotatable_and_never_listed() -> None:
    store = MemoryStore(ManualClock(NOON))
    await registry.put_tenant(store, Tenant(name="a"))
    with pytest.raises(Exception, match="no tenant"):
        await registry.create_key(store, "nobody", NOON)
    k1, secret1 = await registry.create_key(store, "a", NOON, name="ci")
    k2, secret2 = await registry.create_key(store, "a", NOON)
    assert secret1.startswith(k1.prefix + ".") and k1.digest != k2.digest and k1.salt != k2.salt
    reg, _ = await registry.load(store)
    stored = reg.model_dump_json()
    assert secret1.split(".", 1)[1] not in stored and secret2.split(".", 1)[1] not in stored
    assert "digest" not in k1.public() and "salt" not in k1.public()

    d = Directory(store)
    await d.refresh()
    assert d.principal(secret1).key == k1 and d.principal(secret1).label == k1.prefix
    for bad in (None, "nope", k1.prefix + ".wrong", secret1 + "x"):
        with pytest.raises(Unauthorized):
            d.principal(bad)
    new, secret3 = await registry.rotate_key(store, k1.id, NOON + 1)
    await d.refresh()
    with pytest.raises(Unauthorized, match="revoked"):
        d.principal(secret1)
    assert d.principal(secret3).key == new and new.name == "ci" and new.tenant == "a"
    await registry.revoke_key(store, k2.id, NOON + 2)
    await d.refresh()
    with pytest.raises(Unauthorized, match="revoked"):
        d.principal(secret2)


async def test_no_keys_means_anonymous_until_the_first_key() -> None:
    store = MemoryStore(ManualClock(NOON))
    d = Directory(store)
    await d.refresh()
    assert d.anonymous and d.principal(None).tenant.name == "default"
    await registry.put_tenant(store, Tenant(name="a"))
    await registry.create_key(store, "a", NOON)
    await d.refresh()
    with pytest.raises(Unauthorized):
        d.principal(None)


def test_a_key_or_tenant_may_narrow_the_models() -> None:
    p = Principal(Tenant(name="a", models=["m1", "m2"]))
    p.allows("m1")
    with pytest.raises(ModelNotFound):
        p.allows("m3")


async def test_a_budget_admits_worst_cases_and_settles_actuals() -> None:
    clock = ManualClock(NOON)
    store = MemoryStore(clock)
    adm = admission(store, clock)
    p = Principal(Tenant(name="a", budgets=[Budget(usd=1.0, period=Period.DAY)]))
    t1 = await adm.admit(p, "r1", "m", 100, 0.6)
    with pytest.raises(QuotaExceeded) as exc:
        await adm.admit(p, "r2", "m", 100, 0.6)  # 0.6 held + 0.6 > 1
    assert exc.value.status == 429 and exc.value.body()["error"]["type"] == "insufficient_quota"
    assert "tenant 'a' budget of $1 per day" in exc.value.message
    assert "2026-12-02T00:00:00Z" in exc.value.message
    assert exc.value.headers()["Retry-After"] == str(12 * 3600)
    await adm.settle(t1, USAGE, 0.25, pool="p", capacity_class="spot")
    assert await store.value("b:t:a:d2026-12-01") == 0.25
    t2 = await adm.admit(p, "r2", "m", 100, 0.6)  # the hold became the 0.25 spent
    await adm.settle(t2, None, 0.0, pool=None, capacity_class=None)  # failed: released
    assert await store.value("b:t:a:d2026-12-01") == 0.25
    await adm.settle(t1, USAGE, 0.25, pool="p", capacity_class="spot")  # twice: once
    rows = await store.read(LEDGER)
    assert [(rid, r["usd"], r["pool"], r["class"]) for _, rid, r in rows] == [
        ("r1", 0.25, "p", "spot")
    ]
    clock.advance(12 * 3600)  # the next day: a budget of its own
    t3 = await adm.admit(p, "r3", "m", 100, 0.9)
    assert t3.budgets == ("b:t:a:d2026-12-02",)


async def test_a_key_budget_and_a_tenant_budget_both_hold() -> None:
    clock = ManualClock(NOON)
    store = MemoryStore(clock)
    adm = admission(store, clock)
    await registry.put_tenant(store, Tenant(name="a"))
    key, _ = await registry.create_key(
        store, "a", NOON, budgets=[Budget(usd=0.5, period=Period.TOTAL)]
    )
    tenant = Tenant(name="a", budgets=[Budget(usd=10.0, period=Period.MONTH)])
    p = Principal(tenant, key, key.prefix)
    await adm.admit(p, "r1", "m", 10, 0.4)
    with pytest.raises(QuotaExceeded, match=f"key {key.prefix} budget of \\$0.5 in total"):
        await adm.admit(p, "r2", "m", 10, 0.4)
    # the refused request took nothing from the tenant's budget (all or nothing)
    assert await store.value("b:t:a:m2026-12") == pytest.approx(0.4)


async def test_rate_limits_per_key_tenant_and_model_with_openai_headers() -> None:
    clock = ManualClock(NOON)
    store = MemoryStore(clock)
    adm = admission(store, clock)
    tenant = Tenant(name="a", limits=Limits(rpm=5, tpm=1000), model_limits={"big": Limits(rpm=2)})
    p = Principal(tenant)
    first = await adm.admit(p, "r0", "m", 100, 0.0)
    assert first.headers["x-ratelimit-limit-requests"] == "5"
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    assert first.headers["x-ratelimit-remaining-tokens"] == "900"
    assert first.headers["x-ratelimit-reset-requests"] in ("1m0s", "1m1s")
    await adm.admit(p, "r1", "big", 10, 0.0)
    await adm.admit(p, "r2", "big", 10, 0.0)
    with pytest.raises(RateLimited, match="model 'big'"):
        await adm.admit(p, "r3", "big", 10, 0.0)
    with pytest.raises(RateLimited, match="tokens per minute"):
        await adm.admit(p, "r4", "m", 900, 0.0)
    await adm.settle(first, {"prompt_tokens": 5, "completion_tokens": 5}, 0.0, pool=None,
                     capacity_class=None)  # fmt: skip
    await adm.admit(p, "r5", "m", 900, 0.0)  # the 100 held became 10 used
    await adm.admit(p, "r6", "m", 1, 0.0)  # the 5th request this minute
    with pytest.raises(RateLimited, match="5 requests per minute") as exc:
        await adm.admit(p, "r7", "m", 1, 0.0)
    assert exc.value.code == "rate_limit_exceeded" and int(exc.value.headers()["Retry-After"]) >= 1
    clock.advance(61.5)
    await adm.admit(p, "r8", "m", 1, 0.0)


async def test_a_store_outage_fails_closed_or_open_as_configured() -> None:
    clock = ManualClock(NOON)
    down = open_store(f"redis://127.0.0.1:{free_port()}/0")
    tenant = Tenant(name="a", limits=Limits(rpm=4), budgets=[Budget(usd=1.0)])
    p = Principal(tenant)
    closed = admission(down, clock)  # type: ignore[arg-type]
    with pytest.raises(StoreDown) as exc:
        await closed.admit(p, "r1", "m", 10, 0.1)
    assert exc.value.status == 503 and closed.metrics.store_up._value.get() == 0

    opened = admission(down, clock, on_store_outage="open", gateway_replicas=2)  # type: ignore[arg-type]
    t1 = await opened.admit(p, "r1", "m", 10, 0.1)
    await opened.admit(p, "r2", "m", 10, 0.1)
    with pytest.raises(RateLimited):  # 4 rpm across 2 gateways: 2 here
        await opened.admit(p, "r3", "m", 10, 0.1)
    await opened.settle(t1, USAGE, 0.05, pool="p", capacity_class="on_demand")
    assert len(opened.outbox) == 1 and await opened.flush() == 0
    await down.close()

    # the store is back (here: a working one under the same admission): the queued
    # settlement lands once, in the shared budget and ledger
    back = MemoryStore(clock)
    opened.store = back
    assert await opened.flush() == 1 and not opened.outbox
    opened.outbox.append(((), Entry(LEDGER, "r1", {"usd": 0.05})))  # the same id again
    assert await opened.flush() == 1
    assert len(await back.read(LEDGER)) == 1
    assert await back.value("b:t:a:m2026-12") == 0.05


async def test_the_ledger_summarises_by_any_grouping() -> None:
    store = MemoryStore(ManualClock(NOON))
    for i, (tenant, model, usd) in enumerate([("a", "m", 1.0), ("a", "n", 2.0), ("b", "m", 4.0)]):
        rec = {"t": NOON + i * 86400, "tenant": tenant, "key": "k", "model": model,
               "pool": "p", "class": "spot", "prompt_tokens": 1, "completion_tokens": 2,
               "usd": usd}  # fmt: skip
        await store.append(LEDGER, f"r{i}", rec)
    rows = ledger.summarise([r async for r in ledger.entries(store)], ["tenant"])
    assert [(r["tenant"], r["requests"], r["usd"]) for r in rows] == [("b", 1, 4.0), ("a", 2, 3.0)]
    days = ledger.summarise([r async for r in ledger.entries(store, tenant="a")], ["day"])
    assert [r["day"] for r in days] == ["2026-12-02", "2026-12-01"]
    later = [r async for r in ledger.entries(store, since=NOON + 1)]
    assert [r["request_id"] for r in later] == ["r1", "r2"]
    with pytest.raises(ValueError, match="cannot group"):
        ledger.summarise([], ["colour"])


def test_fleetpilot_spend_reports_the_ledger(tmp_path: Any) -> None:
    import asyncio
    import csv
    import subprocess
    import sys

    from fleetpilot.store.sqlite import SqliteStore

    async def fill() -> None:
        store = SqliteStore(tmp_path / "s.db")
        for i, (tenant, model, usd) in enumerate(
            [("a", "m", 1.5), ("a", "n", 2.0), ("b", "m", 4.0)]
        ):
            rec = {"t": NOON + i, "tenant": tenant, "key": "fp-x", "model": model,
                   "pool": "p", "class": "spot", "prompt_tokens": 3, "completion_tokens": 4,
                   "usd": usd}  # fmt: skip
            await store.append(LEDGER, f"r{i}", rec)
        await store.close()

    asyncio.run(fill())
    cmd = [sys.executable, "-m", "fleetpilot", "spend", "--store", f"sqlite://{tmp_path}/s.db"]
    out = subprocess.run([*cmd, "--by", "tenant,model", "--format", "csv"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    rows = list(csv.DictReader(out.splitlines()))
    assert [(r["tenant"], r["model"], float(r["usd"])) for r in rows] == [
        ("b", "m", 4.0), ("a", "n", 2.0), ("a", "m", 1.5)
    ]  # fmt: skip
    table = subprocess.run([*cmd, "--tenant", "a"], capture_output=True, text=True, check=True)
    assert "total" in table.stdout and "3.500000" in table.stdout and " b " not in table.stdout
    bad = subprocess.run([*cmd, "--by", "colour"], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot group by" in bad.stderr


async def test_the_fleet_spend_cap_sheds_batch_first() -> None:
    clock = ManualClock(NOON)
    store = MemoryStore(clock)
    adm = admission(store, clock, spend_cap_per_hour=60.0, batch_cap_share=0.5)  # $1/minute
    p = Principal(Tenant(name="a"))
    b1 = await adm.admit(p, "b1", "m", 1, 0.4, batch=True)
    with pytest.raises(SpendCapReached) as exc:  # 0.8 > the batch share of $0.5
        await adm.admit(p, "b2", "m", 1, 0.4, batch=True)
    assert exc.value.status == 429 and exc.value.code == "spend_cap_reached"
    t = await adm.admit(p, "i1", "m", 1, 0.4)  # interactive work still fits under $1
    with pytest.raises(SpendCapReached):
        await adm.admit(p, "i2", "m", 1, 0.4)
    await adm.settle(t, USAGE, 0.1, pool=None, capacity_class=None)  # committed: 0.5
    i3 = await adm.admit(p, "i3", "m", 1, 0.4)
    for ticket in (b1, i3):  # a hold counts until it is settled...
        await adm.settle(ticket, USAGE, 0.2, pool=None, capacity_class=None)
    clock.advance(61.5)  # ...and what was spent leaves the window a minute later
    await adm.admit(p, "b3", "m", 1, 0.4, batch=True)


async def test_a_budget_alert_fires_once_across_gateways_and_is_signed() -> None:
    import hashlib
    import hmac
    import json

    clock = ManualClock(NOON)
    store = MemoryStore(clock)
    sent: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(url: str, body: bytes, headers: dict[str, str]) -> None:
        sent.append((url, body, headers))

    cfg = TenancyConfig(alert_webhook="http://127.0.0.1:9/hook", alert_secret="s3cret")
    gateways = [
        Admission(store, cfg, TenancyMetrics(CollectorRegistry()), clock=clock, post=post)
        for _ in range(2)
    ]
    p = Principal(Tenant(name="a", budgets=[Budget(usd=1.0, period=Period.DAY, alerts=[0.5])]))
    await gateways[0].admit(p, "r1", "m", 1, 0.3)
    await gateways[1].admit(p, "r2", "m", 1, 0.3)  # 0.6 committed: over half
    await gateways[0].admit(p, "r3", "m", 1, 0.3)  # still over half: no second alert
    for g in gateways:
        await g.drain()
    assert len(sent) == 1
    _, body, headers = sent[0]
    record = json.loads(body)
    assert record["tenant"] == "a" and record["threshold"] == 0.5 and record["budget_usd"] == 1.0
    digest = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Fleetpilot-Signature"] == "sha256=" + digest
    assert len(await store.read("alerts")) == 1


async def test_a_long_request_renews_its_holds() -> None:
    clock = ManualClock(NOON)
    store = MemoryStore(clock)
    adm = admission(store, clock, hold_ttl_s=10.0)
    p = Principal(Tenant(name="a", budgets=[Budget(usd=1.0, period=Period.TOTAL)]))
    ticket = await adm.admit(p, "r1", "m", 10, 0.7)
    clock.advance(8)
    await adm.renew(ticket)
    clock.advance(8)  # 16 s after it was taken, the renewed hold still stands
    assert await store.value("b:t:a:all") == pytest.approx(0.7)
    with pytest.raises(QuotaExceeded):
        await adm.admit(p, "r2", "m", 10, 0.7)
    clock.advance(3)  # not renewed again: it lapses
    assert await store.value("b:t:a:all") == 0.0
