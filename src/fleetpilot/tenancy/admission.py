"""The counters one request touches, reserved before it is sent and settled after.

Admission is one atomic multi-add on the Store (:meth:`~fleetpilot.store.base.Store.add`):
requests per minute (+1) and tokens per minute (prompt + ``max_tokens``, held) for the key,
the tenant and the tenant's model, and the request's worst-case cost held on each budget of
the key and the tenant — all applied or none, in one round trip, so no two gateways can both
take the last dollar.  Settling is one atomic commit: each hold is replaced by what the
request really used and the ledger record is appended in the same step, once per request id,
so the ledger and the budgets never disagree and a retried settle never charges twice.

Budgets lease nothing to gateways: a hold per request costs one round trip (about 0.1 ms to
Redis on loopback), and a hold is exact where a leased chunk is spend stranded on a gateway
that may die; see the closing note of the pipeline issue.

When the Store cannot be reached: ``closed`` answers 503 (nothing is admitted that could
not be charged); ``open`` admits against a local store with every limit and budget divided
by ``gateway_replicas``, and queues the settlements, which reach the shared store (and its
ledger) when it is back.  Either way the outage is a metric and one log line, not a crash.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from fleetpilot.clock import Clock, WallClock
from fleetpilot.errors import QuotaExceeded, RateLimited, SpendCapReached, StoreDown
from fleetpilot.store.base import Add, Added, Entry, Settle, Store, StoreUnavailable
from fleetpilot.store.memory import MemoryStore
from fleetpilot.tenancy.model import Budget, Limits, Period, TenancyConfig
from fleetpilot.tenancy.registry import Principal

__all__ = ["LEDGER", "Admission", "Ticket", "period_label"]

log = logging.getLogger("fleetpilot.tenancy")

LEDGER = "ledger"
ALERTS = "alerts"
FLEET_SPEND = "rl:fleet:usd"  # $ committed across the fleet, sliding over a minute
MINUTE = 60.0


def period_label(period: Period, now: float) -> tuple[str, float | None]:
    """The budget period ``now`` falls in, and the seconds until it ends (None: never)."""
    if period is Period.TOTAL:
        return "all", None
    label, end = _period(period, int(now))
    return label, end - now


@functools.lru_cache(maxsize=64)
def _period(period: Period, second: int) -> tuple[str, int]:
    """A period's label and end (a Unix time): every request asks, so once per second."""
    t = datetime.fromtimestamp(second, UTC)
    if period is Period.DAY:
        end = calendar.timegm((t.year, t.month, t.day, 0, 0, 0)) + 86400
        return t.strftime("d%Y-%m-%d"), end
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    end = calendar.timegm((year, month, 1, 0, 0, 0))
    return t.strftime("m%Y-%m"), end


@dataclass(frozen=True, slots=True)
class _Why:
    """What an add stands for, to explain a refusal and fill the rate-limit headers."""

    kind: str  # "requests" | "tokens" | "budget"
    scope: str  # "key fp-…" | "tenant a" | "tenant a, model m"
    limit: float
    period: Period | None = None
    counter: str = ""


@dataclass(slots=True)
class Ticket:
    """What admission reserved for one request (the ``hold`` of its Call)."""

    hold: str  # the request id: names every hold it took
    principal: Principal
    model: str
    worst_usd: float
    held_tokens: int
    settles: tuple[str, ...]  # counters holding tokens, to settle to tokens used
    budgets: tuple[str, ...]  # counters holding $, to settle to $ spent
    local: bool = False  # taken on the fail-open local store
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class TenancyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.spend = Counter(
            "fleetpilot_tenant_spend_dollars", "Settled spend, $", ["tenant"], registry=r
        )
        self.remaining = Gauge(
            "fleetpilot_tenant_budget_remaining_dollars",
            "Budget left after the last admission, $",
            ["tenant", "period"],
            registry=r,
        )
        self.refused = Counter(
            "fleetpilot_tenant_refused", "Requests refused", ["tenant", "reason"], registry=r
        )
        self.store_errors = Counter(
            "fleetpilot_store_errors", "Store calls that failed", ["op"], registry=r
        )
        self.store_up = Gauge("fleetpilot_store_up", "Whether the store answers", registry=r)
        self.store_up.set(1)
        self.pending = Gauge(
            "fleetpilot_store_pending_settlements",
            "Settlements waiting for the store to come back",
            registry=r,
        )
        self.hold_short = Counter(
            "fleetpilot_budget_hold_short",
            "Requests whose charge came out above their hold",
            registry=r,
        )
        self.alerts = Counter(
            "fleetpilot_budget_alerts", "Budget thresholds crossed", ["tenant"], registry=r
        )


class Admission:
    def __init__(
        self,
        store: Store,
        config: TenancyConfig,
        metrics: TenancyMetrics,
        *,
        clock: Clock | None = None,
        post: Callable[[str, bytes, dict[str, str]], Awaitable[Any]] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.clock = clock or WallClock()
        self.offset = 0.0  # the store's clock minus ours, learnt by sync_clock()
        self.local = MemoryStore(self.clock)
        self.outbox: deque[tuple[tuple[Settle, ...], Entry]] = deque()
        self.down_since: float | None = None
        self._fired: set[str] = set()
        self._post = post
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the store's clock and health -------------------------------------------------------
    async def sync_clock(self) -> None:
        before = self.clock.now()
        theirs = await self.store.now()
        after = self.clock.now()
        self.offset = theirs - (before + after) / 2

    def now(self) -> float:
        return self.clock.now() + self.offset

    def _down(self, op: str, exc: Exception) -> None:
        self.metrics.store_errors.labels(op).inc()
        self.metrics.store_up.set(0)
        if self.down_since is None:
            self.down_since = self.clock.now()
            log.error(
                "the shared store is unreachable (%s); admission fails %s: %s",
                op,
                self.config.on_store_outage,
                exc,
            )

    def _up(self) -> None:
        if self.down_since is not None:
            log.warning(
                "the shared store answers again after %.1f s", self.clock.now() - self.down_since
            )
            self.down_since = None
            self.metrics.store_up.set(1)

    # -- admission --------------------------------------------------------------------------
    def _adds(
        self,
        p: Principal,
        rid: str,
        model: str,
        tokens: int,
        usd: float,
        share: float,
        batch: bool,
    ) -> tuple[list[Add], list[_Why]]:
        ttl = self.config.hold_ttl_s
        adds: list[Add] = []
        why: list[_Why] = []
        now = self.now()
        cap = self.config.spend_cap_per_hour
        if cap is not None:  # the fleet's committed $ over the last minute, batch held lower
            limit = cap / 60.0 * share * (self.config.batch_cap_share if batch else 1.0)
            adds.append(
                Add(FLEET_SPEND, usd, limit, MINUTE, sliding=True, hold=rid, hold_ttl_s=ttl)
            )
            why.append(_Why("spend_cap", "the fleet", limit, counter=FLEET_SPEND))
        scopes: list[tuple[str, str, Limits, list[Budget]]] = []
        if p.key is not None:
            scopes.append((f"k:{p.key.id}", f"key {p.key.prefix}", p.key.limits, p.key.budgets))
        t = p.tenant
        scopes.append((f"t:{t.name}", f"tenant {t.name!r}", t.limits, t.budgets))
        per_model = t.model_limits.get(model)
        if per_model is not None:
            scopes.append(
                (f"tm:{t.name}:{model}", f"tenant {t.name!r}, model {model!r}", per_model, [])
            )
        for key, scope, limits, budgets in scopes:
            if limits.rpm is not None:
                adds.append(Add(f"rl:{key}:req", 1, limits.rpm * share, MINUTE, sliding=True))
                why.append(_Why("requests", scope, limits.rpm * share))
            if limits.tpm is not None:
                adds.append(
                    Add(
                        f"rl:{key}:tok",
                        tokens,
                        limits.tpm * share,
                        MINUTE,
                        sliding=True,
                        hold=rid,
                        hold_ttl_s=ttl,
                    )
                )
                why.append(_Why("tokens", scope, limits.tpm * share, counter=f"rl:{key}:tok"))
            for b in budgets:
                label, left = period_label(b.period, now)
                counter = f"b:{key}:{label}"
                window = None if left is None else left + 86400.0  # the key outlives its period
                adds.append(Add(counter, usd, b.usd * share, window, hold=rid, hold_ttl_s=ttl))
                why.append(_Why("budget", scope, b.usd * share, b.period, counter))
        return adds, why

    async def admit(
        self,
        p: Principal,
        rid: str,
        model: str,
        tokens: int,
        worst_usd: float,
        *,
        batch: bool = False,
    ) -> Ticket:
        """Reserve the request's place under every limit and budget, or raise the 429 that
        names the one it does not fit (503 when the store is down and budgets fail closed)."""
        adds, why = self._adds(p, rid, model, tokens, worst_usd, 1.0, batch)
        local = False
        try:
            added = await self.store.add(*adds) if adds else Added(True, (), ())
            self._up()
        except StoreUnavailable as exc:
            self._down("admit", exc)
            if self.config.on_store_outage == "closed":
                raise StoreDown("budgets and limits cannot be checked just now") from None
            share = 1.0 / self.config.gateway_replicas
            adds, why = self._adds(p, rid, model, tokens, worst_usd, share, batch)
            added = await self.local.add(*adds) if adds else Added(True, (), ())
            local = True
        if not added.ok:
            raise self._refusal(p, why, added)
        ticket = Ticket(
            rid,
            p,
            model,
            worst_usd,
            tokens,
            tuple(w.counter for w in why if w.kind == "tokens"),
            tuple(w.counter for w in why if w.kind in ("budget", "spend_cap")),
            local,
            _headers(why, added),
        )
        for i, w in enumerate(why):
            if w.kind == "budget":
                self._budget_seen(p, w, added.values[i])
        return ticket

    def _refusal(self, p: Principal, why: list[_Why], added: Added) -> Exception:
        i = added.refused or 0
        w = why[i]
        resets = added.resets_in[i]
        tenant = p.tenant.name
        if w.kind == "budget":
            self.metrics.refused.labels(tenant, "budget").inc()
            assert w.period is not None
            _, left = period_label(w.period, self.now())  # not the counter's: it outlives it
            when = "it does not reset" if left is None else f"it resets at {_at(left, self.now())}"
            per = "in total" if w.period is Period.TOTAL else f"per {w.period.value}"
            return QuotaExceeded(
                f"the {w.scope} budget of ${w.limit:g} {per} cannot take this "
                f"request ({added.values[i]:.6f} of it is spent or held); {when}",
                resets_in=left,
            )
        self.metrics.refused.labels(tenant, w.kind).inc()
        if w.kind == "spend_cap":
            share = self.config.batch_cap_share
            return SpendCapReached(
                f"the fleet's committed spend is at its cap of ${self.config.spend_cap_per_hour:g}"
                f" per hour (batch requests stop at {share:.0%} of it); try again shortly",
                retry_after=max(1.0, resets or 1.0),
            )
        err = RateLimited(
            f"rate limit of {w.limit:g} {w.kind} per minute reached for {w.scope}",
            retry_after=max(1.0, resets or 1.0),
        )
        return err

    def _budget_seen(self, p: Principal, w: _Why, value: float) -> None:
        assert w.period is not None
        of_key = p.key is not None and w.scope.startswith("key")
        if not of_key:  # the gauge is the tenant's; a key's own budget has its alerts only
            self.metrics.remaining.labels(p.tenant.name, w.period.value).set(
                max(0.0, w.limit - value)
            )
        alerts = p.key.budgets if of_key and p.key is not None else p.tenant.budgets
        for b in alerts:
            if b.period is not w.period:
                continue
            for share in b.alerts:
                name = f"{w.counter}:{share:g}"
                if value >= share * w.limit and name not in self._fired:
                    self._fired.add(name)
                    self.spawn(self._alert(p, w, share, value, name))

    async def _alert(self, p: Principal, w: _Why, share: float, value: float, name: str) -> None:
        """One alert per threshold per period, fleet-wide: the first gateway to append it to
        the alerts log raises it."""
        record = {
            "t": self.now(),
            "tenant": p.tenant.name,
            "scope": w.scope,
            "period": w.period.value if w.period else None,
            "threshold": share,
            "committed_usd": round(value, 9),
            "budget_usd": w.limit,
        }
        try:
            if not await self.store.append(ALERTS, name, record):
                return
        except StoreUnavailable:
            self._fired.discard(name)
            return
        self.metrics.alerts.labels(p.tenant.name).inc()
        log.warning(
            "budget alert: %s has committed %.0f%% of its $%g per %s budget",
            w.scope,
            100 * value / w.limit,
            w.limit,
            record["period"],
        )
        if self._post is not None and self.config.alert_webhook:
            body = json.dumps(record).encode()
            headers = {"Content-Type": "application/json"}
            if self.config.alert_secret:
                sig = hmac.new(self.config.alert_secret.encode(), body, hashlib.sha256)
                headers["X-Fleetpilot-Signature"] = "sha256=" + sig.hexdigest()
            with contextlib.suppress(Exception):
                await self._post(self.config.alert_webhook, body, headers)

    # -- settling ---------------------------------------------------------------------------
    async def settle(
        self,
        ticket: Ticket,
        usage: dict[str, Any] | None,
        usd: float,
        *,
        pool: str | None,
        capacity_class: str | None,
    ) -> None:
        """Replace the request's holds with what it used and record it in the ledger, once.
        ``usage`` None: nothing was generated (a failure before the first byte)."""
        if ticket.settled:
            return
        ticket.settled = True
        prompt = int((usage or {}).get("prompt_tokens") or 0)
        completion = int((usage or {}).get("completion_tokens") or 0)
        if usd > ticket.worst_usd + 1e-12:
            self.metrics.hold_short.inc()
        settles = tuple(Settle(c, ticket.hold, float(prompt + completion)) for c in ticket.settles)
        settles += tuple(Settle(c, ticket.hold, usd) for c in ticket.budgets)
        p = ticket.principal
        entry = None
        if usage is not None:
            entry = Entry(
                LEDGER,
                ticket.hold,
                {
                    "t": round(self.now(), 3),
                    "tenant": p.tenant.name,
                    "key": p.label,
                    "model": ticket.model,
                    "pool": pool,
                    "class": capacity_class,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "usd": usd,
                },
            )
            self.metrics.spend.labels(p.tenant.name).inc(usd)
        if ticket.local:
            await self.local.commit(settles)
            if entry is not None:  # the shared budgets and ledger learn of it when back
                self._queue(tuple(Settle(s.key, s.hold, s.amount) for s in settles), entry)
            return
        try:
            await self.store.commit(settles, entry)
            self._up()
        except StoreUnavailable as exc:
            self._down("settle", exc)
            if entry is not None:
                self._queue(settles, entry)
            # with no entry the holds simply expire

    async def drain(self) -> None:
        """Wait for settlements in flight (a gateway that stops, a test that counts)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def renew(self, ticket: Ticket) -> None:
        """Push the request's holds' expiry ``hold_ttl_s`` further on: a stream that runs
        longer than the hold's life keeps its reservation (an add of nothing under the same
        hold name only moves its expiry)."""
        ttl = self.config.hold_ttl_s
        adds = [
            Add(c, 0.0, hold=ticket.hold, hold_ttl_s=ttl) for c in ticket.settles + ticket.budgets
        ]
        if ticket.settled or not adds:
            return
        store = self.local if ticket.local else self.store
        with contextlib.suppress(StoreUnavailable):
            await store.add(*adds)

    def _queue(self, settles: tuple[Settle, ...], entry: Entry) -> None:
        self.outbox.append((settles, entry))
        self.metrics.pending.set(len(self.outbox))

    async def flush(self) -> int:
        """Send queued settlements; each is a commit under its request id, so one whose
        reply was lost is not charged twice.  Returns how many went."""
        sent = 0
        while self.outbox:
            settles, entry = self.outbox[0]
            try:
                await self.store.commit(settles, entry)
            except StoreUnavailable:
                break
            self.outbox.popleft()
            sent += 1
        self.metrics.pending.set(len(self.outbox))
        if sent:
            self._up()
        return sent

    async def run(self, interval_s: float = 1.0) -> None:
        """Keep the store's clock offset fresh and drain the outbox, until cancelled."""
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self.sync_clock()
                await self.flush()
            await asyncio.sleep(interval_s)

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _at(left: float, now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(round(now + left)))


def _duration(seconds: float | None) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``250ms``."""
    if seconds is None:
        return "0s"
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = round(seconds)
    m, s = divmod(whole, 60)
    return f"{m}m{s}s" if m else f"{s}s"


def _headers(why: list[_Why], added: Added) -> dict[str, str]:
    """``x-ratelimit-*`` for the tightest requests and tokens limit the request passed."""
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        best: tuple[float, int] | None = None
        for i, w in enumerate(why):
            if w.kind == kind:
                left = w.limit - added.values[i]
                if best is None or left < best[0]:
                    best = (left, i)
        if best is not None:
            left, i = best
            out[f"x-ratelimit-limit-{kind}"] = f"{why[i].limit:g}"
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(left)))
            out[f"x-ratelimit-reset-{kind}"] = _duration(added.resets_in[i])
    return out
