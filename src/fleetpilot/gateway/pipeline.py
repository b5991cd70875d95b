"""The gateway's request path as a chain of stages, independent of any HTTP front.

A *stage* is ``async (call, next) -> answer``: it may read and fill the :class:`Call`, answer
by itself (an error, a cached reply), or pass on to ``next`` and look at, wrap or replace
what comes back.  The chain is composed once at start-up (:func:`compose`) from the stages
switched on, in DESIGN.md's order, ending in the terminal *upstream* stage
(:mod:`fleetpilot.gateway.stages.upstream`) that routes, retries and continues; a stage that
is off is simply not in the chain.

An :class:`Answer` is a :class:`Whole` reply or a :class:`Streamed` one, whose ``events`` are
the SSE payloads (the bytes after ``data:``).  A stream may also offer ``direct``: a front
that can write an event at once hands it a :data:`Sink`, and the producer then writes the
ordinary events from its own socket callback, with no task woken per event (most of a
relayed event's CPU otherwise); whatever the sink declines, and everything that is not
ordinary (the first event, the last, usage, a failure, a continuation), still comes through
``events``, in order.  A stage that must see every event (an output check) wraps ``direct``
or sets it to ``None``; one that needs only the end (settlement) leaves it.

The HTTP fronts turn a request into a call and an answer into bytes, and know no stage.  A
stage that holds something (a budget hold, a lease on a replica) releases it in one place:
``try/finally`` around ``next`` for a whole answer, or a wrapping generator's ``finally`` for
a stream — a front that stops reading (the client left) closes the stream's iterator, so
those ``finally`` blocks run on every path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fleetpilot.core.model import Request
from fleetpilot.errors import ApiError, log_line
from fleetpilot.gateway.intake import Inbound
from fleetpilot.tenancy.registry import Principal

__all__ = [
    "Answer", "Call", "Handler", "Sink", "Stage", "Streamed", "Whole", "compose", "error_reply",
]  # fmt: skip

log = logging.getLogger("fleetpilot.gateway")


@dataclass(slots=True)
class Call:
    """One request's context; stages fill the fields they own."""

    inbound: Inbound  # the checked request, with the client's headers
    request_id: str
    principal: Principal | None = None  # who is calling (auth)
    hold: Any = None  # what admission reserved for it (limits and budget holds)
    request: Request | None = None  # the core request as routed (upstream)
    pool: str | None = None  # the pool that served it (upstream)
    usage: dict[str, Any] | None = None  # what it used, once known (upstream)


@dataclass(slots=True)
class Whole:
    """A whole, non-streamed answer."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


# Writes one event's payload to the client now; False (nothing written) when it cannot.
Sink = Callable[[bytes], bool]


@dataclass(slots=True)
class Streamed:
    """A server-sent event stream: the head is decided, the events come as they come."""

    headers: dict[str, str]
    events: AsyncIterator[bytes]  # SSE payloads, "[DONE]" last when the stream ends well
    status: int = 200
    direct: Callable[[Sink], None] | None = None  # offer a sink, before reading ``events``


Answer = Whole | Streamed
Handler = Callable[[Call], Awaitable[Answer]]
Stage = Callable[[Call, Handler], Awaitable[Answer]]


def compose(stages: Sequence[Stage], terminal: Handler) -> Handler:
    """``stages[0]`` first, ``terminal`` last: one handler, built once."""
    handler = terminal
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage, following: Handler) -> Handler:
    async def handler(call: Call) -> Answer:
        return await stage(call, following)

    return handler


def error_reply(exc: ApiError, request_id: str) -> Whole:
    """What a client is sent for ``exc``; the error is logged here, once, without a traceback
    (a client's mistake is not the gateway's fault; a replica's failure is in ``detail``)."""
    level = logging.WARNING if exc.status >= 500 else logging.INFO
    log.log(level, "%s", log_line(exc, request_id))
    headers = {**exc.headers(), "x-request-id": request_id}
    return Whole(exc.status, "application/json", json.dumps(exc.body()).encode(), headers)
