"""Open-loop load generation: replay a trace against an OpenAI-compatible endpoint.

Each request is sent at ``arrival * time_scale`` real seconds after the start, whether or not
earlier ones have finished (open loop: a slow server meets the traffic it would meet in
production instead of slowing the client down).  Latencies are measured from the *scheduled*
send time, so a client-side wait for a free connection counts against the server's numbers
rather than hiding behind them (no coordinated omission).

Requests go through the official ``openai`` client as streaming chat completions with
``stream_options={"include_usage": True}``; a prompt of ``n`` tokens is ``n`` three-letter
words, which :func:`fleetpilot.tokens.estimate_tokens` counts exactly.  Each request carries
``x-fleetpilot-service-class`` and, when interactive, ``x-fleetpilot-ttft-slo`` in trace
seconds: a gateway in front of emulators run with ``--time-scale s`` is configured with the
same ``time_scale`` and keeps its deadlines in modelled seconds, which are trace seconds.

A request is *lost* when it neither completed with all its tokens nor was explicitly shed
(HTTP 429): errors, broken streams and streams that end short all count.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import openai
from prometheus_client.parser import text_string_to_metric_families

from fleetpilot.clock import Clock, SystemClock
from fleetpilot.core.model import ServiceClass
from fleetpilot.core.workload import TraceRequest

__all__ = ["LoadResult", "LoadSummary", "Outcome", "prompt_words", "replay"]

OK = "ok"
SHED = "shed"
INCOMPLETE = "incomplete"

_VOCAB = tuple("".join(w) for w in itertools.product(string.ascii_lowercase, repeat=3))


def prompt_words(index: int, n: int) -> str:
    """``n`` three-letter words, different for every ``index`` below 17,576 (no cache hits).

    Three letters and a space are four characters a word, so ``len(text) // 4 < n`` and the
    token estimate is exactly ``n``.
    """
    size = len(_VOCAB)
    return " ".join(_VOCAB[(index * 7919 + k * 104729) % size] for k in range(n))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one request.  Times are real seconds from its scheduled send."""

    index: int
    service_class: ServiceClass
    status: str  # "ok", "shed", "incomplete", "http_<code>", or an error kind
    max_tokens: int
    ttft: float | None = None
    e2e: float | None = None
    tokens: int = 0  # completion words received
    usage_tokens: int | None = None  # usage.completion_tokens, if the stream reported it
    prompt_usage: int | None = None  # usage.prompt_tokens, likewise
    prompt_cached: int = 0  # of those, the ones the engine's prefix cache served
    attempts: int | None = None  # x-fleetpilot-attempts, if the server sent it
    replica: str | None = None  # x-fleetpilot-replica, if the server sent it
    lag: float = 0.0  # how late the client sent it (should stay near 0)
    detail: str = ""

    @property
    def lost(self) -> bool:
        return self.status not in (OK, SHED)


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks; NaN when there is nothing to rank."""
    if not values:
        return math.nan
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """Latencies in trace seconds (real seconds / time_scale)."""

    requests: int
    ok: int
    shed: int
    lost: int
    retried: int
    errors: dict[str, int]
    ttft_p50: float
    ttft_p95: float
    ttft_p99: float
    e2e_p50: float
    e2e_p95: float
    e2e_p99: float
    slo_attainment: float  # share of interactive requests completed with TTFT <= SLO
    max_lag: float


@dataclass(frozen=True, slots=True)
class LoadResult:
    outcomes: tuple[Outcome, ...]
    time_scale: float
    ttft_slo_s: float  # trace seconds
    wall_s: float

    def summary(self) -> LoadSummary:
        s = self.time_scale
        ttfts = [o.ttft / s for o in self.outcomes if o.ttft is not None]
        e2es = [o.e2e / s for o in self.outcomes if o.status == OK and o.e2e is not None]
        interactive = [o for o in self.outcomes if o.service_class is ServiceClass.INTERACTIVE]
        met = sum(
            o.status == OK and o.ttft is not None and o.ttft / s <= self.ttft_slo_s
            for o in interactive
        )
        return LoadSummary(
            requests=len(self.outcomes),
            ok=sum(o.status == OK for o in self.outcomes),
            shed=sum(o.status == SHED for o in self.outcomes),
            lost=sum(o.lost for o in self.outcomes),
            retried=sum((o.attempts or 1) > 1 for o in self.outcomes),
            errors=dict(Counter(o.status for o in self.outcomes if o.lost)),
            ttft_p50=_percentile(ttfts, 0.50),
            ttft_p95=_percentile(ttfts, 0.95),
            ttft_p99=_percentile(ttfts, 0.99),
            e2e_p50=_percentile(e2es, 0.50),
            e2e_p95=_percentile(e2es, 0.95),
            e2e_p99=_percentile(e2es, 0.99),
            slo_attainment=met / len(interactive) if interactive else math.nan,
            max_lag=max((o.lag / s for o in self.outcomes), default=0.0),
        )


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _send(
    client: openai.AsyncOpenAI,
    model: str,
    index: int,
    req: TraceRequest,
    *,
    scheduled: float,
    clock: Clock,
    ttft_slo_s: float,
    timeout_s: float,
    words: bool = True,
    extra_body: dict[str, Any] | None = None,
) -> Outcome:
    headers = {"x-fleetpilot-service-class": req.service_class.value}
    if req.service_class is ServiceClass.INTERACTIVE:
        headers["x-fleetpilot-ttft-slo"] = f"{ttft_slo_s:g}"
    lag = clock.now() - scheduled
    base = Outcome(index, req.service_class, status="", max_tokens=req.max_tokens, lag=lag)
    ttft: float | None = None
    parts: list[str] = []
    usage: int | None = None
    prompt_usage: int | None = None
    cached = 0
    finish: str | None = None
    attempts: int | None = None
    replica: str | None = None
    try:
        async with client.chat.completions.with_streaming_response.create(
            model=model,
            messages=[{"role": "user", "content": prompt_words(index, req.prompt_tokens)}],
            max_tokens=req.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            user=req.tenant,
            extra_headers=headers,
            extra_body=extra_body,
            timeout=timeout_s,
        ) as response:
            attempts = _int_header(response.headers.get("x-fleetpilot-attempts"))
            replica = response.headers.get("x-fleetpilot-replica")
            stream = await response.parse()
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        if ttft is None:
                            ttft = clock.now() - scheduled
                        parts.append(choice.delta.content)
                    if choice.finish_reason is not None:
                        finish = choice.finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage.completion_tokens
                    prompt_usage = chunk.usage.prompt_tokens
                    details = chunk.usage.prompt_tokens_details
                    cached = (details.cached_tokens or 0) if details is not None else 0
    except openai.APIStatusError as exc:
        status = SHED if exc.status_code == 429 else f"http_{exc.status_code}"
        got = exc.response.headers.get("x-fleetpilot-attempts")
        return replace(base, status=status, attempts=_int_header(got), detail=str(exc)[:200])
    except openai.APITimeoutError as exc:
        status, detail = "timeout", str(exc)
    except openai.APIConnectionError as exc:
        status, detail = "connection", str(exc)
    except openai.APIError as exc:  # an error event inside the stream
        status, detail = "stream_error", str(exc)
    except Exception as exc:  # the transport broke mid-stream (reset, protocol error)
        status, detail = f"broken_{type(exc).__name__}", str(exc)
    else:
        # the emulator's words are its tokens; a real engine's count is its usage
        tokens = len("".join(parts).split()) if words else (usage or 0)
        if usage is None:
            status, detail = INCOMPLETE, "no usage chunk"
        elif tokens != usage:
            status, detail = INCOMPLETE, f"received {tokens} tokens, usage says {usage}"
        elif finish is None:
            status, detail = INCOMPLETE, "no finish_reason"
        elif finish == "length" and tokens != req.max_tokens:
            status, detail = INCOMPLETE, f"finish 'length' after {tokens}/{req.max_tokens}"
        else:
            status, detail = OK, ""
    return replace(
        base,
        status=status,
        ttft=ttft,
        e2e=clock.now() - scheduled,
        tokens=len("".join(parts).split()) if words else (usage or 0),
        usage_tokens=usage,
        prompt_usage=prompt_usage,
        prompt_cached=cached,
        attempts=attempts,
        replica=replica,
        detail=detail[:200],
    )


async def replay(
    base_url: str,
    model: str,
    trace: Sequence[TraceRequest],
    *,
    time_scale: float,
    ttft_slo_s: float,
    api_key: str = "x",
    max_connections: int = 256,
    timeout_s: float = 120.0,
    on_done: Callable[[Outcome], None] | None = None,
    clock: Clock | None = None,
    words: bool = True,
    extra_body: dict[str, Any] | None = None,
) -> LoadResult:
    """Send every request of ``trace`` on schedule and wait for all of them.

    ``ttft_slo_s`` is in trace seconds, in the header as in the summary.  At most
    ``max_connections`` requests are open at once (the rest wait, their latency counting).
    ``timeout_s`` bounds the wait for each response byte.  ``on_done`` sees every outcome as
    it finishes (a progress bar).  ``words``: the replicas are emulators, whose words are
    their tokens, so a stream is checked word for word against its usage (a real engine's
    is checked against nothing but itself).  ``extra_body`` goes into every request (e.g.
    llama.cpp's ``ignore_eos``).
    """
    if time_scale <= 0 or max_connections < 1:
        raise ValueError("time_scale must be positive and max_connections at least 1")
    clk: Clock = clock or SystemClock()
    slots = asyncio.Semaphore(max_connections)
    outcomes: list[Outcome] = []

    async def one(index: int, req: TraceRequest, scheduled: float) -> None:
        async with slots:
            outcome = await _send(
                client,
                model,
                index,
                req,
                scheduled=scheduled,
                clock=clk,
                ttft_slo_s=ttft_slo_s,
                timeout_s=timeout_s,
                words=words,
                extra_body=extra_body,
            )
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    client = openai.AsyncOpenAI(
        base_url=f"{base_url.rstrip('/')}/v1", api_key=api_key, max_retries=0
    )
    start = clk.now()
    async with client, asyncio.TaskGroup() as tasks:
        for index, req in enumerate(trace):
            scheduled = start + req.arrival * time_scale
            wait = scheduled - clk.now()
            if wait > 0:
                await clk.sleep(wait)
            tasks.create_task(one(index, req, scheduled), name=f"request-{index}")
    outcomes.sort(key=lambda o: o.index)
    return LoadResult(tuple(outcomes), time_scale, ttft_slo_s, clk.now() - start)


def metric_sums(text: str) -> dict[str, float]:
    """Every sample of a Prometheus exposition summed by sample name (a gateway's counters,
    over all their labels)."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums
