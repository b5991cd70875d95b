"""The tenancy stages: who is calling (auth), and whether their limits and budgets can take
the request (admission), with its settlement once the answer is done.

Limits and budgets are one stage, not two: they are reserved in one atomic multi-add on the
Store (:mod:`fleetpilot.tenancy.admission`), so a request refused by a budget never spends a
rate-limit slot, and there is one round trip on the hot path instead of two.  Settling runs
in a task of its own after the answer is written (a whole answer) or the stream has ended
(a wrapping generator's ``finally``: the client left, a replica failed, or it ended well), so
it adds nothing to the client's latency and happens exactly once on every path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fleetpilot.core.model import ServiceClass
from fleetpilot.gateway.auth import bearer
from fleetpilot.gateway.fleet import LiveFleet
from fleetpilot.gateway.pipeline import Answer, Call, Handler, Stage, Streamed
from fleetpilot.tenancy.admission import Admission, Ticket
from fleetpilot.tenancy.prices import Prices
from fleetpilot.tenancy.registry import Directory

__all__ = ["admission_stage", "tenant_auth_stage"]

# Settling waits this long after the answer, so a burst of answers goes out before the
# burst's settlements compete with it for the gateway's one core (see bench/README.md,
# "stages on vs off").  The holds stand meanwhile, so budgets stay safe; a gateway killed
# within it loses those ledger entries (their holds expire), as it would any settlement it
# had not sent.
SETTLE_AFTER_S = 0.01


def tenant_auth_stage(directory: Directory) -> Stage:
    async def auth(call: Call, following: Handler) -> Answer:
        principal = call.principal = directory.principal(bearer(call.inbound.headers))
        principal.allows(call.inbound.model)
        return await following(call)

    return auth


def _choices(body: dict[str, object]) -> int:
    n = max((v for v in (body.get("n"), body.get("best_of")) if isinstance(v, int)), default=1)
    return max(1, n)


def admission_stage(admission: Admission, prices: Prices, fleet: LiveFleet) -> Stage:
    async def books(call: Call, ticket: Ticket) -> None:
        await asyncio.sleep(SETTLE_AFTER_S)
        usage = call.usage
        prompt = int((usage or {}).get("prompt_tokens") or 0)
        completion = int((usage or {}).get("completion_tokens") or 0)
        usd = prices.actual(call.pool, call.inbound.model, prompt, completion)
        pool = fleet.pools.get(call.pool or "")
        await admission.settle(
            ticket,
            usage,
            usd,
            pool=call.pool,
            capacity_class=pool.offering.capacity_class.value if pool else None,
        )

    def settle(call: Call, ticket: Ticket) -> None:
        """In a task of its own: off the client's path, not cancelled with the request, and
        after the upstream stage's own books (scheduled before it) have filled the usage."""
        admission.spawn(books(call, ticket))

    renew_every = admission.config.hold_ttl_s / 3

    async def settling(
        call: Call, ticket: Ticket, events: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def renew() -> None:  # a long stream keeps its holds (on a timer: see Streamed.direct)
            nonlocal timer
            admission.spawn(admission.renew(ticket))
            timer = loop.call_later(renew_every, renew)

        timer = loop.call_later(renew_every, renew)
        try:
            async for event in events:
                yield event
        finally:
            timer.cancel()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()  # the upstream's own finally: leases released, usage known
            settle(call, ticket)

    async def admit(call: Call, following: Handler) -> Answer:
        inbound = call.inbound
        assert call.principal is not None, "the auth stage comes first"
        messages = inbound.body.get("messages")
        choices = _choices(inbound.body)
        worst = choices * prices.worst_case(
            inbound.model,
            len(inbound.raw),
            len(messages) if isinstance(messages, list) else 1,
            inbound.max_tokens,
        )
        tokens = inbound.prompt_tokens + inbound.max_tokens * choices
        batch = inbound.service_class is ServiceClass.BATCH
        ticket = call.hold = await admission.admit(
            call.principal, call.request_id, inbound.model, tokens, worst, batch=batch
        )
        try:
            answer = await following(call)
        except BaseException:
            settle(call, ticket)
            raise
        answer.headers.update(ticket.headers)
        if isinstance(answer, Streamed):
            answer.events = settling(call, ticket, answer.events)
        else:
            settle(call, ticket)  # a task: it runs after the upstream's own books, once written
        return answer

    return admit
