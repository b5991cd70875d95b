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


def groups(text: str) -> list[str]:
    """``tenant,model`` as group names, each one of :data:`GROUPS` (else ValueError)."""
    return _checked([g for g in text.split(",") if g])


def _checked(by: Sequence[str]) -> list[str]:
    unknown = [g for g in by if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {unknown}: choose from {', '.join(GROUPS)}")
    return list(by)


def _group_value(record: dict[str, Any], group: str) -> str:
    if group == "day":
        return time.strftime("%Y-%m-%d", time.gmtime(float(record.get("t", 0.0))))
    value = record.get(group)
    return "-" if value is None else str(value)


def summarise(records: Iterable[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Requests, tokens and $ per group of ``by`` (names from :data:`GROUPS`, see
    :func:`groups`), dearest first."""
    by = _checked(by)
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


def parse_time(text: str | None) -> float | None:
    """A Unix time, or an ISO date / datetime (UTC when it names no zone)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a Unix time nor an ISO date") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def render(rows: list[dict[str, Any]], by: Sequence[str], fmt: str) -> str:
    """``rows`` as a table (with a total), CSV or JSON."""
    columns = [*by, "requests", "prompt_tokens", "completion_tokens", "usd"]
    if fmt == "json":
        import json

        return json.dumps(rows, indent=2)
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        w = csv.DictWriter(out, columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: table, csv or json")
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title="spend (settled requests)")
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    total = {c: sum(r[c] for r in rows) for c in columns[len(by) :]}
    table.add_row(
        *(["total"] + [""] * (len(by) - 1))[: len(by)],
        *(_cell(total[c]) for c in columns[len(by) :]),
    )
    console = Console(width=160, record=True)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def _cell(v: Any) -> str:
    return f"{v:.6f}" if isinstance(v, float) else str(v)


def run_report(
    *,
    store: str | None,
    fleet: Any,
    by: str,
    tenant: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
) -> str:
    """``fleetpilot spend``: the ledger of ``store`` (or of the fleet file's store), rendered."""
    import asyncio

    from fleetpilot.errors import ConfigError
    from fleetpilot.store import StoreUnavailable, open_store

    if store is None and fleet is not None:
        from fleetpilot.config import load_fleet

        cfg = load_fleet(fleet)
        store = cfg.store.url if cfg.store else None
    if store is None:
        raise ConfigError("name the store: --store URL, or --fleet FILE with a store: section")
    try:
        by_groups = groups(by)
        window = parse_time(since), parse_time(until)
        if fmt not in ("table", "csv", "json"):
            raise ValueError(f"unknown format {fmt!r}: table, csv or json")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    async def read() -> list[dict[str, Any]]:
        s = open_store(store)
        try:
            return [r async for r in entries(s, since=window[0], until=window[1], tenant=tenant)]
        finally:
            await s.close()

    try:
        records = asyncio.run(read())
    except StoreUnavailable as exc:
        raise ConfigError(f"cannot read the ledger: {exc}") from None
    return render(summarise(records, by_groups), by_groups, fmt)
