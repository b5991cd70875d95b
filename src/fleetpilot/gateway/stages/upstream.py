"""The terminal stage: route, send, retry before the first byte, continue after it, settle.

One attempt loop (:meth:`Proxy._attempt`) serves both kinds of answer.  It routes the request,
sends it and, on a failure before the client has seen a byte (connection refused or reset,
5xx, a stall, a non-streamed answer cut off), ejects the replica (see
:mod:`fleetpilot.gateway.fleet`) and tries another, at most ``max_attempts`` times.

A stream is answered with a :class:`~fleetpilot.gateway.pipeline.Streamed` as soon as a
replica has sent its head; its events are relayed as they come.  A replica that dies after
that is replaced through the same loop by one asked to continue from the text already sent —
for chat, the partial answer as a final assistant message (how, the engine's entry in
:mod:`fleetpilot.engines` says); for completions, appended to the prompt.  Chunks from the new
replica are relabelled with the original stream's id, its role-only opening chunk is dropped,
and ``usage`` adds up both parts, so the client sees one uninterrupted stream.

Tokens are counted as the engine reports them: llama.cpp's running count on every chunk
(it holds text back around stop sequences, so a chunk is not a token), one per chunk for
engines that send one.  So a continuation asks for exactly the tokens still owed.  ``usage``
is the engine's, from whichever chunk carries it; the client gets it once, in a chunk of its
own.  After a continuation the engine that finished counted the text already sent as prompt:
its prompt count less those tokens is the original prompt's, and its completion count plus
them is the whole answer's.

Neither a retry nor a continuation is judged against time the failure spent: each is routed
afresh with the request's whole TTFT budget from now, away from the replicas that already
failed it.  A continuation is never shed (the client is reading it): it goes to the fastest
replica, or waits up to ``continuation_wait_s`` for one to come back.  A request that waited
for a replica to recover is not shed after the wait either.  Work for a client that left is
cancelled (a whole answer's task is cancelled; a stream's iterator is closed), and the hold
on the replica is released in one ``finally`` whatever ends the request.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from fleetpilot.clock import Clock
from fleetpilot.config import GatewayConfig, PoolConfig
from fleetpilot.core.model import Action, Decision, ReplicaState, Request, ServiceClass
from fleetpilot.core.routing import Router, RoutingParams
from fleetpilot.engines import Engine
from fleetpilot.errors import (
    ApiError,
    NoHealthyReplica,
    Overloaded,
    ReplicaGone,
    UpstreamError,
    UpstreamUnavailable,
    log_line,
    retryable,
)
from fleetpilot.gateway.fleet import Lease, LiveFleet, LiveReplica
from fleetpilot.gateway.intake import Inbound
from fleetpilot.gateway.metrics import GatewayMetrics
from fleetpilot.gateway.pipeline import Answer, Call, Sink, Streamed, Whole, log
from fleetpilot.gateway.upstream import Upstream, UpstreamResponse

__all__ = ["Proxy"]

_DONE = b"[DONE]"


@dataclass(slots=True)
class _Stream:
    """What the client has been sent so far on one stream.

    The text sent is kept as ``pieces``: strings, or the raw events they came in, decoded
    only if a continuation needs the text (most streams never do, and decoding every event
    was most of the gateway's CPU per relayed event).
    """

    chat: bool = True
    pieces: list[str | bytes] = field(default_factory=list)
    produced: int = 0  # tokens the client has been sent, as the engines counted them
    base: int = 0  # of those, the ones sent before the current segment
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    stream_id: str | None = None
    created: int | None = None
    first_at: float | None = None
    last_at: float | None = None
    segments: int = 0
    sink: Sink | None = None  # the front's, when it writes ordinary events itself
    deadline: float = float("inf")  # of the first token (learns the router's headroom)
    learn: bool = False  # whether its first token teaches the router's headroom

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else _text_of(p, self.chat) for p in self.pieces)


@dataclass(slots=True)
class _Tries:
    """One request's attempts so far, across retries and continuations."""

    request: Request
    limit: int  # failures allowed in all
    attempts: int = 0
    failures: int = 0
    failed: frozenset[str] = frozenset()  # replicas that failed it
    unreachable: bool = True  # every failure so far: a replica that could not be reached
    pool: str = "none"


@dataclass(slots=True)
class _Held:
    """A replica answering: its head is in; the hold on it is to be released once."""

    replica: LiveReplica
    lease: Lease
    resp: UpstreamResponse
    data: bytes | None  # the whole body, for a non-streamed answer
    sent_at: float = 0.0
    decision: Decision | None = None  # what the router predicted for it


class Proxy:
    """The upstream stage (terminal: it has no ``next``)."""

    def __init__(
        self,
        config: GatewayConfig,
        fleet: LiveFleet,
        upstream: Upstream,
        metrics: GatewayMetrics,
        router: Router,
        clock: Clock,
        pools: dict[str, PoolConfig],
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.upstream = upstream
        self.metrics = metrics
        self.router = router
        self.params = RoutingParams(shed_factor=config.shed_factor, target_miss=config.target_miss)
        self.clock = clock
        self._headers: dict[str, dict[str, str]] = {}
        self._rename: dict[str, str] = {}
        for p in pools.values():
            h = {"Content-Type": "application/json"}
            if p.api_key:
                h["Authorization"] = f"Bearer {p.api_key}"
            self._headers[p.name] = h
            if p.upstream_model:
                self._rename[p.name] = p.upstream_model

    # -- routing ----------------------------------------------------------------------------
    def request_of(self, inbound: Inbound) -> Request:
        now = self.clock.now()
        if inbound.ttft_slo is not None:
            slo = inbound.ttft_slo
        elif inbound.service_class is ServiceClass.BATCH:
            slo = self.config.batch_slo_s
        else:
            slo = self.config.ttft_slo_s
        return Request(
            model=inbound.model,
            prompt_tokens=inbound.prompt_tokens,
            max_tokens=inbound.max_tokens,
            deadline=now + slo,
            service_class=inbound.service_class,
            arrival=now,
        )

    def afresh(self, request: Request, *, must_serve: bool = False) -> Request:
        """``request`` routed again from now with its whole TTFT budget: a retry or a
        continuation is not judged against a deadline its failure already spent."""
        now = self.clock.now()
        budget = request.deadline - request.arrival
        return replace(
            request, arrival=now, deadline=now + budget, must_serve=request.must_serve or must_serve
        )

    def retry_after(self, modelled: float) -> float:
        """A ``Retry-After`` in real seconds, at least 1 and at most ``max_retry_after_s``."""
        real = self.clock.real_seconds(modelled)
        return min(self.config.max_retry_after_s, max(1.0, real))

    async def choose(self, request: Request, exclude: frozenset[str] = frozenset()) -> Decision:
        """A decision to ROUTE, waiting while the policy queues or replicas recover.

        ``exclude``: replicas that already failed this request, tried again only when nothing
        else is left.  Waiting for an unavailable model ends at the request's deadline (503),
        or for a ``must_serve`` request after ``continuation_wait_s``.
        """
        fleet = self.fleet
        model = request.model
        give_up: float | None = None
        while True:
            decision = self.router(request, fleet.snapshot(model, exclude), self.params)
            if decision.action is Action.UNAVAILABLE and exclude:
                exclude = frozenset()  # only replicas that failed it are left: they may recover
                continue
            if decision.action is Action.ROUTE:
                return decision
            now = self.clock.now()
            if decision.action is Action.SHED:
                self.metrics.shed.labels(model).inc()
                raise Overloaded(
                    decision.reason, retry_after=self.retry_after(decision.retry_after)
                )
            if decision.action is Action.QUEUE:
                await fleet.wait_change(min(decision.retry_after, request.deadline - now))
                continue
            # UNAVAILABLE: wait for a cooling-down or starting replica, up to the deadline.
            if give_up is None:
                wait = self.config.continuation_wait_s if request.must_serve else 0.0
                give_up = max(request.deadline, now + wait)
            recovery = fleet.next_recovery(model)
            starting = any(
                r.state is ReplicaState.STARTING for r in fleet.replicas if r.base.model == model
            )
            if (recovery is None and not starting and not request.must_serve) or now >= give_up:
                raise NoHealthyReplica(f"no replica of {model!r} is available")
            until = give_up if recovery is None else min(recovery, give_up)
            await fleet.wait_change(until - now)
            request = replace(request, must_serve=True)  # it waited: it is not shed after

    def _body(
        self, replica: LiveReplica, inbound: Inbound, body: dict[str, Any] | None, cont: _Cont
    ) -> bytes:
        """Bytes for the replica: the client's own when nothing changes (the fast path);
        a stream's carry the fields its engine needs, a continuation's its way to carry on."""
        rename = self._rename.get(replica.base.pool)
        kind = replica.engine
        if cont is not None:
            body = _continuation(inbound, cont[0], cont[1], kind)
        if body is None and rename is None:
            return inbound.raw
        out = dict(body if body is not None else inbound.body)
        if inbound.stream and kind.stream_fields:
            out.update(kind.stream_fields)
        if rename is not None:
            out["model"] = rename
        return json.dumps(out).encode()

    # -- the one attempt loop ---------------------------------------------------------------
    async def __call__(self, call: Call) -> Answer:
        if call.inbound.stream:
            return await self._stream(call)
        return await self._unary(call)

    def _fail(self, model: str, pool: str, exc: ApiError) -> None:
        self.metrics.requests.labels(model, pool, str(exc.status)).inc()

    async def _attempt(
        self,
        t: _Tries,
        inbound: Inbound,
        body: dict[str, Any] | None,
        whole: bool,
        cont: _Cont = None,
    ) -> _Held:
        """Route and send until a replica answers (its head, and its body when ``whole``);
        a failure before that goes to another replica.  Raises the :class:`ApiError` the
        client is to see when the tries run out; the hold is the caller's to release.
        ``cont``: the stream so far and the tokens still owed, when continuing one."""
        model = t.request.model
        while True:
            try:
                decision = await self.choose(t.request, t.failed)
            except ApiError as exc:
                self._fail(model, t.pool, exc)
                raise
            replica = self.fleet.get(decision.replica_id or "")
            t.pool = pool = replica.base.pool
            data = self._body(replica, inbound, body, cont)
            lease = self.fleet.acquire(replica.id, t.request.prompt_tokens, t.request.max_tokens)
            t.attempts += 1
            sent_at = self.clock.now()
            try:
                if whole:
                    resp = await self.upstream.send(
                        replica.base.url + inbound.path,
                        data,
                        read_timeout=self._patience(decision.predicted_e2e, 5.0),
                        headers=self._headers.get(pool),
                    )
                    return _Held(replica, lease, resp, await resp.read(), sent_at, decision)
                resp = await self.upstream.send(
                    replica.base.url + inbound.path,
                    data,
                    read_timeout=self.config.first_byte_timeout_s,
                    first_byte_timeout=self._patience(
                        decision.predicted_ttft, self.config.first_byte_timeout_s
                    ),
                    headers=self._headers.get(pool),
                )
                return _Held(replica, lease, resp, None, sent_at, decision)
            except UpstreamError as exc:
                lease.release()
                self.fleet.failed(replica.id)
                t.failed |= {replica.id}
                t.failures += 1
                t.unreachable = t.unreachable and isinstance(exc, UpstreamUnavailable)
                if not retryable(exc) or t.failures >= t.limit:
                    final = _unreachable(model, exc) if t.unreachable else exc
                    self._fail(model, pool, final)
                    raise final from None
                self.metrics.retries.labels(model).inc()
                t.request = self.afresh(t.request)
            except BaseException:  # cancelled: the client left
                lease.release()
                self.metrics.requests.labels(model, pool, "499").inc()
                raise

    # -- a whole answer ---------------------------------------------------------------------
    async def _unary(self, call: Call) -> Whole:
        """A non-streamed request, retried on other replicas; failures raise :class:`ApiError`.

        Cancelling it (the client went away) drops the replica's connection, so the replica
        stops generating, and releases the hold on it.
        """
        inbound = call.inbound
        request = call.request = self.request_of(inbound)
        t = _Tries(request, limit=self.config.max_attempts)
        held = await self._attempt(t, inbound, None, True)
        call.pool = t.pool
        data = held.data or b""
        # The answer goes out first and the books are settled just after, on the next turn of
        # the loop: at low concurrency every microsecond before the write is added latency.
        e2e = self.clock.now() - request.arrival
        asyncio.get_running_loop().call_soon(
            self._settle_unary, call, held, t.pool, held.resp.status, data, e2e
        )
        return Whole(
            held.resp.status,
            held.resp.content_type or "application/json",
            data,
            {
                "x-fleetpilot-replica": held.replica.id,
                "x-fleetpilot-attempts": str(t.attempts),
                "x-request-id": call.request_id,
            },
        )

    def _settle_unary(
        self, call: Call, held: _Held, pool: str, status: int, data: bytes, e2e: float
    ) -> None:
        lease, model = held.lease, call.inbound.model
        self.fleet.succeeded(held.replica.id)
        lease.first_token()
        if status == 200 and call.inbound.kind != "embeddings":
            usage = call.usage = _usage_of(data)
            lease.tokens(usage.get("completion_tokens", 0))
            self._settle(lease, pool, model, usage, e2e, None)
        else:
            lease.release()
        if status == 200:
            self.metrics.served(model, pool).ok.inc()
        else:
            self.metrics.requests.labels(model, pool, str(status)).inc()

    # -- a stream ---------------------------------------------------------------------------
    async def _stream(self, call: Call) -> Answer:
        """The head once a replica has sent its own; the events from then on (see the
        module's docstring), ending in ``[DONE]`` or in an error event."""
        inbound = call.inbound
        request = call.request = self.request_of(inbound)
        t = _Tries(request, limit=self.config.max_attempts)
        body: dict[str, Any] = dict(inbound.body)
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        held = await self._attempt(t, inbound, body, False)
        call.pool = t.pool
        if held.resp.status != 200:  # a 4xx from the replica: the client's problem, pass it on
            data = await held.resp.read()
            held.lease.release()
            self.metrics.requests.labels(inbound.model, t.pool, str(held.resp.status)).inc()
            return Whole(
                held.resp.status, "application/json", data, {"x-request-id": call.request_id}
            )
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-fleetpilot-replica": held.replica.id,
            "x-fleetpilot-attempts": str(t.attempts),
            "x-request-id": call.request_id,
        }
        t.limit = self.config.max_attempts + self.config.max_continuations
        state = _Stream(
            chat=inbound.kind == "chat", deadline=t.request.deadline, learn=self._learns(inbound)
        )

        def offer(sink: Sink) -> None:
            state.sink = sink

        return Streamed(headers, self._events(call, t, held, state), direct=offer)

    async def _events(
        self, call: Call, t: _Tries, held: _Held, state: _Stream
    ) -> AsyncIterator[bytes]:
        inbound = call.inbound
        model = inbound.model
        arrival = t.request.arrival
        done = False
        try:
            while True:
                try:
                    async for payload in self._relay(held, state, t.pool, model, inbound):
                        yield payload
                    break
                except ReplicaGone as exc:
                    held.lease.release()
                    self.fleet.failed(held.replica.id)
                    t.failed |= {held.replica.id}
                    t.failures += 1
                    remaining = inbound.max_tokens - state.produced
                    if state.finish_reason is not None or remaining <= 0:
                        break  # everything was sent; only the end of the stream went missing
                    if t.failures >= t.limit or state.segments > self.config.max_continuations:
                        self._fail(model, t.pool, exc)
                        yield self._abort(exc, call)
                        done = True
                        return
                self.metrics.continuations.labels(model).inc()
                t.request = replace(
                    self.afresh(t.request, must_serve=True),
                    prompt_tokens=inbound.prompt_tokens + state.produced,
                    max_tokens=remaining,
                )
                state.base, state.usage = state.produced, None
                try:
                    held = await self._attempt(t, inbound, None, False, (state, remaining))
                except ApiError as exc:
                    yield self._abort(exc, call)
                    done = True
                    return
                call.pool = t.pool
                if held.resp.status != 200:
                    detail = (await held.resp.read()).decode("utf-8", "replace")[:200]
                    held.lease.release()
                    err = ReplicaGone("the replica refused to continue", detail=detail)
                    yield self._abort(err, call)
                    done = True
                    return
            self.fleet.succeeded(held.replica.id)
            if state.segments == 1 and self.config.learn_profiles:
                self._learn(held, state)
            usage = call.usage = self._final_usage(inbound, state)
            ttft = state.first_at - arrival if state.first_at is not None else None
            self._settle(held.lease, t.pool, model, usage, self.clock.now() - arrival, ttft)
            self.metrics.served(model, t.pool).ok.inc()
            done = True
            if inbound.include_usage:
                chunk: dict[str, Any] = {
                    "id": state.stream_id,
                    "object": _chunk_object(inbound),
                    "created": state.created,
                    "model": inbound.model,
                    "choices": [],
                    "usage": usage,
                }
                yield json.dumps(chunk).encode()
            yield _DONE
        finally:
            if not done:  # the client went away (or the front failed): stop the replica too
                held.resp.close()
                held.lease.release()
                self.metrics.requests.labels(model, t.pool, "499").inc()
            if call.usage is None and state.first_at is not None:
                # cut short: what the client was sent is what it is charged for
                call.usage = self._final_usage(inbound, state)

    async def _relay(
        self, held: _Held, state: _Stream, pool: str, model: str, inbound: Inbound
    ) -> AsyncIterator[bytes]:
        """One replica's events, as the client is to see them, noting what was sent."""
        state.segments += 1
        continuing = state.segments > 1
        chat = inbound.kind == "chat"
        itl = self.metrics.served(model, pool).itl
        lease = held.lease
        sink = state.sink
        counted = held.replica.engine.tokens_so_far if held.replica.engine.produced else None

        def tokens(payload: bytes) -> int:
            """How many tokens ``payload`` adds to what the client has, by the engine's
            count (called only when it counts: otherwise a chunk is one token)."""
            so_far = counted(payload) if counted is not None else None
            return 1 if so_far is None else max(0, state.base + so_far - state.produced)

        if sink is not None and not continuing:
            special, has_text = _SPECIAL.search, _TEXT.search

            def take(payload: bytes) -> bool:
                """The common event, written by the front at once (see below)."""
                if (
                    state.stream_id is None
                    or payload == _DONE
                    or special(payload) is not None
                    or not sink(payload)
                ):
                    return False
                if has_text(payload) is not None:
                    n = 1 if counted is None else tokens(payload)
                    self._token(state, lease, model, itl, payload, n)
                return True

            held.resp.divert(take)
        try:
            async for payload in held.resp.events():
                if payload == _DONE:
                    return
                if (
                    not continuing
                    and state.stream_id is not None
                    and _ENDS.search(payload) is None
                    and b'"usage"' not in payload
                ):
                    # The common event: one more piece of text, or none.  Nothing in it
                    # changes how the stream goes on, so it is passed on undecoded.
                    if _TEXT.search(payload) is not None:
                        n = 1 if counted is None else tokens(payload)
                        self._token(state, lease, model, itl, payload, n)
                    yield payload
                    continue
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    continue
                usage = chunk.pop("usage", None)
                if isinstance(usage, dict) and usage:
                    state.usage = usage  # the gateway sends it once, at the end
                choices = chunk.get("choices") or ()
                if not choices:
                    continue
                choice = choices[0]
                text = _choice_text(choice, chat)
                if choice.get("finish_reason"):
                    state.finish_reason = choice["finish_reason"]
                if continuing:
                    if not text and not choice.get("finish_reason"):
                        continue  # the new replica's opening role chunk
                    chunk["id"], chunk["created"] = state.stream_id, state.created
                    payload = json.dumps(chunk).encode()
                else:
                    if state.stream_id is None:
                        state.stream_id, state.created = chunk.get("id"), chunk.get("created")
                    if usage is not None:
                        payload = json.dumps(chunk).encode()
                n = tokens(payload)
                if text:
                    self._token(state, lease, model, itl, text, n)
                elif n and counted is not None and state.first_at is not None:
                    self._count(state, lease, n)  # the finish chunk's last held-back tokens
                yield payload
            raise ReplicaGone("the replica ended its stream without [DONE]")
        finally:
            held.resp.close()

    def _settle(
        self,
        lease: Lease,
        pool: str,
        model: str,
        usage: dict[str, Any],
        e2e: float,
        ttft: float | None,
    ) -> None:
        cost = lease.release()
        m = self.metrics.served(model, pool)
        m.cost.inc(cost)
        m.request_cost.observe(cost)
        m.e2e.observe(e2e)
        if ttft is not None:
            m.ttft.observe(ttft)
        m.prompt_tokens.inc(usage.get("prompt_tokens", 0) or 0)
        m.completion_tokens.inc(usage.get("completion_tokens", 0) or 0)

    def _learn(self, held: _Held, state: _Stream) -> None:
        """A stream that one replica served whole teaches that replica's correction: its
        first token against the router's prediction, and its time per token after that."""
        d = held.decision
        if state.first_at is None or d is None:
            return
        ttft = (state.first_at - held.sent_at, d.predicted_ttft)
        per_token = None
        if state.last_at is not None and state.produced >= 3:
            observed = (state.last_at - state.first_at) / (state.produced - 1)
            steps = max(held.lease.max_tokens - 1, 1)
            per_token = (observed, (d.predicted_e2e - d.predicted_ttft) / steps)
        self.fleet.observed(held.replica.id, ttft, per_token)

    def _patience(self, predicted: float, slack: float) -> float:
        """Real seconds to wait for what the router predicted would take ``predicted``
        (modelled): a replica that queues a request is busy, not stalled, for three times
        that and ``slack``, and never less than ``first_byte_timeout_s``."""
        expected = self.clock.real_seconds(3 * predicted)
        return max(self.config.first_byte_timeout_s, expected + slack)

    def _learns(self, inbound: Inbound) -> bool:
        """Whether this request's first token may move the router's learnt headroom: only an
        interactive one at the configured TTFT target, so no client header can drag the
        shared value for everyone."""
        return inbound.service_class is ServiceClass.INTERACTIVE and (
            inbound.ttft_slo is None or inbound.ttft_slo == self.config.ttft_slo_s
        )

    def _final_usage(self, inbound: Inbound, state: _Stream) -> dict[str, Any]:
        """The engine's usage; after a continuation, both parts added up (see the module's
        docstring); estimated only where no engine said."""
        last = state.usage or {}
        if state.segments <= 1 and last:
            return last
        completion, prompt = state.produced, inbound.prompt_tokens
        if isinstance(last.get("completion_tokens"), int):
            completion = state.base + last["completion_tokens"]
        if isinstance(last.get("prompt_tokens"), int) and last["prompt_tokens"] > state.base:
            prompt = last["prompt_tokens"] - state.base
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _token(
        self, state: _Stream, lease: Lease, model: str, itl: Any, piece: str | bytes, n: int
    ) -> None:
        """A piece of text sent, ``n`` tokens: first-token and inter-token bookkeeping, the
        text kept."""
        now = self.clock.now()
        if state.first_at is None:
            state.first_at = now
            lease.first_token()
            if state.learn:
                self.fleet.first_token(model, now <= state.deadline, self.params)
        elif state.last_at is not None and n:
            itl.observe((now - state.last_at) / n)
        if n:
            state.last_at = now
        state.pieces.append(piece)
        state.produced += n
        lease.tokens(n)

    @staticmethod
    def _count(state: _Stream, lease: Lease, n: int) -> None:
        state.produced += n
        lease.tokens(n)

    def _abort(self, exc: ApiError, call: Call) -> bytes:
        """The error event that ends a started stream: the status line has already gone."""
        log.warning("%s (mid-stream)", log_line(exc, call.request_id))
        return json.dumps(exc.body()).encode()


# a choice that ends the stream (finish_reason set) / that carries text: cheap byte tests that
# tell whether an event must be decoded (both spacings of JSON encoders)
_ENDS = re.compile(rb'"finish_reason":\s*"')
_SPECIAL = re.compile(rb'"finish_reason":\s*"|"usage"')  # either: the event is not ordinary
_TEXT = re.compile(rb'"(?:content|text)":\s*"(?!")')


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    """The text a stream's choice carries ("" for none)."""
    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    return text if isinstance(text, str) else ""


def _text_of(payload: bytes, chat: bool) -> str:
    """The text one raw event carried."""
    try:
        return _choice_text(json.loads(payload)["choices"][0], chat)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


def _unreachable(model: str, exc: UpstreamError) -> ApiError:
    """Every try failed to reach a replica at all: the model has no healthy replica (503),
    not a replica that failed (502)."""
    return NoHealthyReplica(f"no replica of {model!r} could be reached", detail=exc.detail)


def _chunk_object(inbound: Inbound) -> str:
    return "chat.completion.chunk" if inbound.kind == "chat" else "text_completion"


_Cont = tuple[_Stream, int] | None  # a stream to continue and the tokens it is still owed


def _continuation(inbound: Inbound, state: _Stream, remaining: int, kind: Engine) -> dict[str, Any]:
    """A body asking a replica of ``kind`` to carry on from what the client already has."""
    body = dict(inbound.body)
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    body["max_tokens"] = remaining
    body.pop("max_completion_tokens", None)
    if inbound.kind == "chat":
        if kind.continue_chat is None:
            raise ReplicaGone(f"a {kind.name} replica cannot continue an assistant message")
        body["messages"] = [*inbound.body["messages"], {"role": "assistant", "content": state.text}]
        body.update(kind.continue_chat)
    else:
        prompt = inbound.body["prompt"]
        if isinstance(prompt, list):  # one prompt per request is all a stream can carry on
            prompt = "".join(p for p in prompt if isinstance(p, str))
        body["prompt"] = prompt + state.text
        if kind.continue_count:
            body[kind.continue_count] = state.produced
    return body


def _usage_of(data: bytes) -> dict[str, Any]:
    try:
        usage = json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return {}
    return usage if isinstance(usage, dict) else {}
