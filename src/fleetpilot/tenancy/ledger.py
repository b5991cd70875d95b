"""Reading the spend ledger back: every settled request, grouped as the reader asks.

Records are written by :meth:`~fleetpilot.tenancy.admission.Admission.settle`, one per
request id, in the same atomic step that charges the budgets.  This module only reads.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from fleetpilot.store.base import Store
from fleetpilot.tenancy.admission import LEDGER

__all__ = ["GROUPS", "entries", "summarise"]

GROUPS = ("tenant", "key", "model", "pool", "class", "day")


async def entries(
    store: Store,
    *,
    since: float | None = None,
    until: float | None = None,
    tenant: str | None = None,
    page: int = 1000,
) -> AsyncIterator[dict[str, Any]]:
    """Ledger records in order, filtered by time and tenant."""
    after = 0
    while True:
        rows = await store.read(LEDGER, after=after, limit=page)
        for seq, rid, record in rows:
            after = seq
            t = float(record.get("t", 0.0))
            if since is not None and t < since:
                continue
            if until is not None and t >= until:
                continue
            if tenant is not None and record.get("tenant") != tenant:
                continue
            yield {"request_id": rid, **record}
        if len(rows) < page:
            return


def _group_value(record: dict[str, Any], group: str) -> str:
    if group == "day":
        return time.strftime("%Y-%m-%d", time.gmtime(float(record.get("t", 0.0))))
    value = record.get(group)
    return "-" if value is None else str(value)


def summarise(records: Iterable[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Requests, tokens and $ per group of ``by`` (names from :data:`GROUPS`), dearest first."""
    unknown = [g for g in by if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {unknown}: choose from {', '.join(GROUPS)}")
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in records:
        key = tuple(_group_value(r, g) for g in by)
        row = rows.get(key)
        if row is None:
            row = rows[key] = dict(zip(by, key, strict=True)) | {
                "requests": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "usd": 0.0,
            }
        row["requests"] += 1
        row["prompt_tokens"] += int(r.get("prompt_tokens", 0))
        row["completion_tokens"] += int(r.get("completion_tokens", 0))
        row["usd"] += float(r.get("usd", 0.0))
    return sorted(rows.values(), key=lambda row: -row["usd"])
