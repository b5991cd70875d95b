"""Route → upstream (retry, continue) → settle: the gateway's per-request path.

Retries: a failure before the client has seen a byte (connection refused or reset, 5xx, a
stall, a non-streamed answer cut off) moves the request to another replica, at most
``max_attempts`` tries; the failing replica is ejected (see :mod:`fleetpilot.gateway.fleet`).

Continuation: once a stream has started, a replica that dies is replaced by another that is
asked to continue from the text already sent — for chat, the partial answer as a final
assistant message with vLLM's ``continue_final_message``; for completions, appended to the
prompt.  Chunks from the new replica are relabelled with the original stream's id, its
role-only opening chunk is dropped, and ``usage`` adds up both parts, so the client sees one
uninterrupted stream.  This assumes one token per chunk (vLLM's default ``stream_interval``).

Neither a retry nor a continuation is judged against time the failure spent: each is routed
afresh with the request's whole TTFT budget from now, away from the replicas that already
failed it.  A continuation is never shed (the client is reading it): it goes to the fastest
replica, or waits up to ``continuation_wait_s`` for one to come back.  A request that waited
for a replica to recover is not shed after the wait either.  Work for a client that left is
cancelled, and every hold on a replica is released whatever ends the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from fleetpilot.clock import Clock
from fleetpilot.config import GatewayConfig, PoolConfig
from fleetpilot.core.model import Action, Decision, ReplicaState, Request, ServiceClass
from fleetpilot.core.routing import Router, RoutingParams
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
from fleetpilot.gateway.fleet import Lease, LiveFleet
from fleetpilot.gateway.intake import Inbound
from fleetpilot.gateway.metrics import GatewayMetrics
from fleetpilot.gateway.upstream import Upstream, UpstreamResponse

__all__ = ["Proxy", "Reply", "error_reply"]

log = logging.getLogger("fleetpilot.gateway")

_DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Reply:
    """A whole, non-streamed answer: what either HTTP front (aiohttp or the fast lane) sends."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]

    def response(self) -> web.Response:
        return web.Response(
            body=self.body, status=self.status, content_type=self.content_type, headers=self.headers
        )


@dataclass(slots=True)
class _Stream:
    """What the client has been sent so far on one stream."""

    parts: list[str] = field(default_factory=list)
    produced: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    stream_id: str | None = None
    created: int | None = None
    first_at: float | None = None
    last_at: float | None = None
    segments: int = 0
    deadline: float = float("inf")  # of the first token (learns the router's headroom)
    learn: bool = False  # whether its first token teaches the router's headroom

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Proxy:
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

    def _body(self, pool: str, inbound: Inbound, body: dict[str, Any] | None) -> bytes:
        """Bytes for the replica: the client's own when nothing changes (the fast path)."""
        rename = self._rename.get(pool)
        if body is None and rename is None:
            return inbound.raw
        out = dict(body if body is not None else inbound.body)
        if rename is not None:
            out["model"] = rename
        return json.dumps(out).encode()

    # -- one request ------------------------------------------------------------------------
    async def handle(self, inbound: Inbound, http: web.Request) -> web.StreamResponse:
        if inbound.stream:
            return await self._stream(inbound, http)
        return (await self.unary(inbound)).response()

    def _fail(self, model: str, pool: str, exc: ApiError) -> None:
        self.metrics.requests.labels(model, pool, str(exc.status)).inc()

    async def unary(self, inbound: Inbound) -> Reply:
        """A non-streamed request, retried on other replicas; failures raise :class:`ApiError`.

        Cancelling it (the client went away) drops the replica's connection, so the replica
        stops generating, and releases the hold on it.
        """
        request = self.request_of(inbound)
        arrival = request.arrival
        model = request.model
        attempts = 0
        pool = "none"
        failed: set[str] = set()
        unreachable = True  # every failure so far was a replica that could not be reached
        while True:
            try:
                decision = await self.choose(request, frozenset(failed))
            except ApiError as exc:
                self._fail(model, pool, exc)
                raise
            replica = self.fleet.get(decision.replica_id or "")
            pool = replica.base.pool
            lease = self.fleet.acquire(replica.id, request.prompt_tokens, request.max_tokens)
            attempts += 1
            predicted = self.clock.real_seconds(3 * decision.predicted_e2e)
            timeout = max(self.config.first_byte_timeout_s, predicted + 5)
            try:
                resp = await self.upstream.send(
                    replica.base.url + inbound.path,
                    self._body(pool, inbound, None),
                    read_timeout=timeout,
                    headers=self._headers.get(pool),
                )
                data = await resp.read()
            except UpstreamError as exc:
                lease.release()
                self.fleet.failed(replica.id)
                failed.add(replica.id)
                unreachable = unreachable and isinstance(exc, UpstreamUnavailable)
                if not retryable(exc) or attempts >= self.config.max_attempts:
                    final = _unreachable(model, exc) if unreachable else exc
                    self._fail(model, pool, final)
                    raise final from None
                self.metrics.retries.labels(model).inc()
                request = self.afresh(request)
                continue
            except BaseException:  # cancelled: the client left
                lease.release()
                self.metrics.requests.labels(model, pool, "499").inc()
                raise
            break
        # The answer goes out first and the books are settled just after, on the next turn of
        # the loop: at low concurrency every microsecond before the write is added latency.
        e2e = self.clock.now() - arrival
        asyncio.get_running_loop().call_soon(
            self._settle_unary, lease, replica.id, model, pool, inbound.kind, resp.status, data, e2e
        )
        return Reply(
            resp.status,
            resp.content_type or "application/json",
            data,
            {
                "x-fleetpilot-replica": replica.id,
                "x-fleetpilot-attempts": str(attempts),
                "x-request-id": inbound.request_id,
            },
        )

    def _settle_unary(
        self,
        lease: Lease,
        replica_id: str,
        model: str,
        pool: str,
        kind: str,
        status: int,
        data: bytes,
        e2e: float,
    ) -> None:
        self.fleet.succeeded(replica_id)
        lease.first_token()
        if status == 200 and kind != "embeddings":
            usage = _usage_of(data)
            lease.tokens(usage.get("completion_tokens", 0))
            self._settle(lease, pool, model, usage, e2e, None)
        else:
            lease.release()
        if status == 200:
            self.metrics.served(model, pool).ok.inc()
        else:
            self.metrics.requests.labels(model, pool, str(status)).inc()

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

    # -- streaming --------------------------------------------------------------------------
    async def _stream(self, inbound: Inbound, http: web.Request) -> web.StreamResponse:
        request = self.request_of(inbound)
        arrival = request.arrival
        model = request.model
        state = _Stream(deadline=request.deadline, learn=self._learns(inbound))
        out: web.StreamResponse | None = None
        attempts = failures = 0
        budget = self.config.max_attempts + self.config.max_continuations
        pool = "none"
        failed: set[str] = set()
        unreachable = True  # every failure so far was a replica that could not be reached
        body: dict[str, Any] = dict(inbound.body)
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        while True:
            try:
                decision = await self.choose(request, frozenset(failed))
            except ApiError as exc:
                self._fail(model, pool, exc)
                if out is None:
                    raise
                await self._abort(out, exc, inbound)
                return out
            replica = self.fleet.get(decision.replica_id or "")
            pool = replica.base.pool
            lease = self.fleet.acquire(replica.id, request.prompt_tokens, request.max_tokens)
            attempts += 1
            resp: UpstreamResponse | None = None
            try:
                try:
                    resp = await self.upstream.send(
                        replica.base.url + inbound.path,
                        self._body(pool, inbound, body),
                        read_timeout=self.config.first_byte_timeout_s,
                        first_byte_timeout=self._first_byte_timeout(decision.predicted_ttft),
                        headers=self._headers.get(pool),
                    )
                except UpstreamError as exc:
                    lease.release()
                    self.fleet.failed(replica.id)
                    failed.add(replica.id)
                    failures += 1
                    unreachable = unreachable and isinstance(exc, UpstreamUnavailable)
                    if failures >= budget or (out is None and attempts >= self.config.max_attempts):
                        final = _unreachable(model, exc) if unreachable else exc
                        self._fail(model, pool, final)
                        if out is None:
                            raise final from None
                        await self._abort(out, final, inbound)
                        return out
                    self.metrics.retries.labels(model).inc()
                    request = self.afresh(request, must_serve=out is not None)
                    continue
                if resp.status != 200:  # a 4xx from the replica: the client's problem
                    data = await resp.read()
                    lease.release()
                    self.metrics.requests.labels(model, pool, str(resp.status)).inc()
                    if out is None:
                        return web.Response(
                            body=data, status=resp.status, content_type="application/json",
                            headers={"x-request-id": inbound.request_id},
                        )  # fmt: skip
                    detail = data.decode("utf-8", "replace")[:200]
                    await self._abort(
                        out, ReplicaGone("the replica refused to continue", detail=detail), inbound
                    )
                    return out
                if out is None:
                    out = web.StreamResponse(
                        headers={
                            "Content-Type": "text/event-stream",
                            "Cache-Control": "no-cache",
                            "x-fleetpilot-replica": replica.id,
                            "x-fleetpilot-attempts": str(attempts),
                            "x-request-id": inbound.request_id,
                        }
                    )
                    try:
                        await out.prepare(http)
                    except ConnectionError:
                        resp.close()
                        lease.release()
                        return out
                try:
                    await self._relay(resp, out, state, lease, pool, model, inbound)
                except ReplicaGone as exc:
                    lease.release()
                    self.fleet.failed(replica.id)
                    failed.add(replica.id)
                    failures += 1
                    remaining = inbound.max_tokens - state.produced
                    if state.finish_reason is not None or remaining <= 0:
                        break  # everything was sent; only the end of the stream went missing
                    if failures >= budget or state.segments > self.config.max_continuations:
                        self._fail(model, pool, exc)
                        await self._abort(out, exc, inbound)
                        return out
                    self.metrics.continuations.labels(model).inc()
                    body = _continuation(inbound, state, remaining)
                    request = replace(
                        self.afresh(request, must_serve=True),
                        prompt_tokens=inbound.prompt_tokens + state.produced,
                        max_tokens=remaining,
                    )
                    continue
                except ConnectionError:  # the client went away: stop the replica too
                    resp.close()
                    lease.release()
                    self.metrics.requests.labels(model, pool, "499").inc()
                    return out
            except asyncio.CancelledError:  # the client went away while we waited
                if resp is not None:
                    resp.close()
                lease.release()
                self.metrics.requests.labels(model, pool, "499").inc()
                raise
            break
        self.fleet.succeeded(replica.id)
        usage = self._final_usage(inbound, state)
        ttft = state.first_at - arrival if state.first_at is not None else None
        self._settle(lease, pool, model, usage, self.clock.now() - arrival, ttft)
        try:
            if inbound.include_usage:
                chunk: dict[str, Any] = {
                    "id": state.stream_id,
                    "object": _chunk_object(inbound),
                    "created": state.created,
                    "model": inbound.model,
                    "choices": [],
                    "usage": usage,
                }
                await out.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await out.write(_DONE)
            await out.write_eof()
        except ConnectionError:
            pass
        self.metrics.served(model, pool).ok.inc()
        return out

    def _first_byte_timeout(self, predicted_ttft: float) -> float:
        """How long a stream's head may take: a replica that queues it is busy, not stalled,
        for as long as the router expected it to queue (and some)."""
        expected = self.clock.real_seconds(3 * predicted_ttft)
        return max(self.config.first_byte_timeout_s, expected + self.config.first_byte_timeout_s)

    def _learns(self, inbound: Inbound) -> bool:
        """Whether this request's first token may move the router's learnt headroom: only an
        interactive one at the configured TTFT target, so no client header can drag the
        shared value for everyone."""
        return inbound.service_class is ServiceClass.INTERACTIVE and (
            inbound.ttft_slo is None or inbound.ttft_slo == self.config.ttft_slo_s
        )

    async def _relay(
        self,
        resp: UpstreamResponse,
        out: web.StreamResponse,
        state: _Stream,
        lease: Lease,
        pool: str,
        model: str,
        inbound: Inbound,
    ) -> None:
        """Copy one replica's stream to the client, noting what was sent."""
        state.segments += 1
        continuing = state.segments > 1
        chat = inbound.kind == "chat"
        itl = self.metrics.served(model, pool).itl
        clock = self.clock
        try:
            async for payload in resp.events():
                if payload == b"[DONE]":
                    return
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    continue
                choices = chunk.get("choices") or ()
                if not choices:
                    if chunk.get("usage"):
                        state.usage = chunk["usage"]
                    continue
                choice = choices[0]
                text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if choice.get("finish_reason"):
                    state.finish_reason = choice["finish_reason"]
                if continuing:
                    if not text and not choice.get("finish_reason"):
                        continue  # the new replica's opening role chunk
                    chunk["id"], chunk["created"] = state.stream_id, state.created
                    chunk.pop("usage", None)
                    payload = json.dumps(chunk).encode()
                elif state.stream_id is None:
                    state.stream_id, state.created = chunk.get("id"), chunk.get("created")
                if text:
                    now = clock.now()
                    if state.first_at is None:
                        state.first_at = now
                        lease.first_token()
                        if state.learn:
                            self.fleet.first_token(model, now <= state.deadline, self.params)
                    elif state.last_at is not None:
                        itl.observe(now - state.last_at)
                    state.last_at = now
                    state.parts.append(text)
                    state.produced += 1
                    lease.tokens(1)
                await out.write(b"data: " + payload + b"\n\n")
            raise ReplicaGone("the replica ended its stream without [DONE]")
        finally:
            resp.close()

    def _final_usage(self, inbound: Inbound, state: _Stream) -> dict[str, Any]:
        if state.segments <= 1 and state.usage:
            return state.usage
        last = state.usage or {}
        completion = state.produced
        if last.get("completion_tokens") is not None:
            completion = max(completion, int(last["completion_tokens"]))
        prompt = inbound.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def _abort(self, out: web.StreamResponse, exc: ApiError, inbound: Inbound) -> None:
        """End a started stream with an error event: the status line has already gone."""
        log.warning("%s (mid-stream)", log_line(exc, inbound.request_id))
        try:
            await out.write(b"data: " + json.dumps(exc.body()).encode() + b"\n\n")
            await out.write_eof()
        except ConnectionError:
            pass


def error_reply(exc: ApiError, request_id: str) -> Reply:
    """What a client is sent for ``exc``; the error is logged here, once, without a traceback
    (a client's mistake is not the gateway's fault; a replica's failure is in ``detail``)."""
    level = logging.WARNING if exc.status >= 500 else logging.INFO
    log.log(level, "%s", log_line(exc, request_id))
    headers = {**exc.headers(), "x-request-id": request_id}
    return Reply(exc.status, "application/json", json.dumps(exc.body()).encode(), headers)


def _unreachable(model: str, exc: UpstreamError) -> ApiError:
    """Every try failed to reach a replica at all: the model has no healthy replica (503),
    not a replica that failed (502)."""
    return NoHealthyReplica(f"no replica of {model!r} could be reached", detail=exc.detail)


def _chunk_object(inbound: Inbound) -> str:
    return "chat.completion.chunk" if inbound.kind == "chat" else "text_completion"


def _continuation(inbound: Inbound, state: _Stream, remaining: int) -> dict[str, Any]:
    """A body asking another replica to carry on from what the client already has."""
    body = dict(inbound.body)
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    body["max_tokens"] = remaining
    body.pop("max_completion_tokens", None)
    if inbound.kind == "chat":
        body["messages"] = [*inbound.body["messages"], {"role": "assistant", "content": state.text}]
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    else:
        prompt = inbound.body["prompt"]
        if isinstance(prompt, list):  # one prompt per request is all a stream can carry on
            prompt = "".join(p for p in prompt if isinstance(p, str))
        body["prompt"] = prompt + state.text
        body["fleetpilot_continue_from"] = state.produced
    return body


def _usage_of(data: bytes) -> dict[str, Any]:
    try:
        usage = json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return {}
    return usage if isinstance(usage, dict) else {}
