"""``fleetpilot demo``, part 3: two tenants on one fleet, one of which runs into its budget.

A gateway with a SQLite store (the embedded default: one file, no server) in front of two
emulated replicas; two tenants, each with its own API key made through the admin API:
``research`` with a small daily budget, ``product`` with a monthly one far above what the
demo spends.  Both send the same stream of requests at once, half of them streamed, through
the official ``openai`` client.  ``research`` starts getting OpenAI's 429
``insufficient_quota`` once its budget is committed; ``product`` is served throughout.  The
table shows each tenant's requests, refusals and spend as the ledger has it (``GET
/admin/spend``, what ``fleetpilot spend`` prints).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.table import Table

from fleetpilot.procs import Supervisor

__all__ = ["TenantsResult", "print_tenants", "run_tenants"]

MODEL = "llama-3.1-8b"
HOST = "127.0.0.1"
TIME_SCALE = 0.05
RESEARCH_BUDGET_USD = 0.0006  # about a tenth of what its requests would cost
REQUESTS = 120  # per tenant
RATE = 20.0  # requests per second per tenant


@dataclass
class Tally:
    sent: int = 0
    served: int = 0
    quota: int = 0  # 429 insufficient_quota
    other: dict[str, int] = field(default_factory=dict)


@dataclass
class TenantsResult:
    tallies: dict[str, Tally]
    spend: dict[str, dict[str, Any]]
    budgets: dict[str, str]

    @property
    def ok(self) -> bool:
        """What the part shows: research refused for quota, product never, nothing else."""
        r, p = self.tallies["research"], self.tallies["product"]
        clean = not r.other and not p.other
        return clean and r.quota > 0 and p.quota == 0 and p.served == p.sent

    @property
    def lost(self) -> int:
        return sum(sum(t.other.values()) for t in self.tallies.values())


def _admin(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def _send(c: openai.AsyncOpenAI, i: int, tally: Tally) -> None:
    tally.sent += 1
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": f"request {i}: say something useful"}
    ]
    try:
        if i % 2:
            stream = await c.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=48, stream=True
            )
            async for _ in stream:
                pass
        else:
            await c.chat.completions.create(model=MODEL, messages=messages, max_tokens=48)
        tally.served += 1
    except openai.APIStatusError as exc:
        if exc.code == "insufficient_quota":
            tally.quota += 1
        else:
            key = f"{exc.status_code} {exc.code}"
            tally.other[key] = tally.other.get(key, 0) + 1
    except openai.APIConnectionError:
        tally.other["connection"] = tally.other.get("connection", 0) + 1


async def run_tenants(console: Console | None = None) -> TenantsResult:
    out = console or Console()
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="fleetpilot-tenants-") as tmp:
        async with Supervisor() as sup:
            tenants = [
                {"name": "research", "budgets": [{"usd": RESEARCH_BUDGET_USD, "period": "day"}]},
                {"name": "product", "budgets": [{"usd": 100.0, "period": "month"}]},
            ]
            gw = await sup.emulated_gateway(
                Path(tmp), model=MODEL, time_scale=TIME_SCALE, host=HOST,
                gateway={"admin_token": token},
                store={"url": f"sqlite:///{tmp}/fleetpilot.db"},
                tenancy={"tenants": tenants},
            )  # fmt: skip
            keys = {
                t: _admin(gw, token, "POST", "/admin/keys", {"tenant": t, "name": "demo"})["key"]
                for t in ("research", "product")
            }
            await asyncio.sleep(0.5)  # the gateway re-reads its keys four times a second
            out.print(
                f"Tenants: research (budget ${RESEARCH_BUDGET_USD:g}/day) and product "
                f"($100/month), {REQUESTS} requests each at {RATE:g}/s, half streamed; "
                "keys made through POST /admin/keys."
            )
            tallies = {t: Tally() for t in keys}
            clients = {
                t: openai.AsyncOpenAI(base_url=gw + "/v1", api_key=k, max_retries=0)
                for t, k in keys.items()
            }
            tasks = []
            for i in range(REQUESTS):
                for t, c in clients.items():
                    tasks.append(asyncio.create_task(_send(c, i, tallies[t])))
                await asyncio.sleep(1.0 / RATE)
            await asyncio.gather(*tasks)
            for c in clients.values():  # closed in this loop, not by the collector after it
                await c.close()
            await asyncio.sleep(0.5)  # settlements run just after each answer
            rows = _admin(gw, token, "GET", "/admin/spend?by=tenant")["rows"]
    spend = {r["tenant"]: r for r in rows}
    budgets = {"research": f"${RESEARCH_BUDGET_USD:g} / day", "product": "$100 / month"}
    return TenantsResult(tallies, spend, budgets)


def print_tenants(result: TenantsResult, out: Console) -> None:
    table = Table(title="two tenants, one fleet: budgets per tenant (ledger: GET /admin/spend)")
    for col in ("tenant", "budget", "sent", "served", "429 insufficient_quota", "other",
                "settled requests", "tokens", "spend $"):  # fmt: skip
        table.add_column(col, justify="right")
    for name, t in result.tallies.items():
        row = result.spend.get(name, {})
        tokens = row.get("prompt_tokens", 0) + row.get("completion_tokens", 0)
        table.add_row(
            name, result.budgets[name], str(t.sent), str(t.served), str(t.quota),
            str(sum(t.other.values())), str(row.get("requests", 0)), str(tokens),
            f"{row.get('usd', 0.0):.6f}",
        )  # fmt: skip
    out.print(table)
    if not result.ok:
        out.print("[bold red]the tenants part did not show what it should (see the table)[/]")
