"""The pipeline seam alone: composition order, one place to release what a stage holds
(whatever ends the request), and the auth stage."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleetpilot.config import FleetConfig
from fleetpilot.core.model import ServiceClass
from fleetpilot.errors import Unauthorized, UpstreamUnavailable
from fleetpilot.gateway.auth import ClientKeys, hash_key
from fleetpilot.gateway.intake import Inbound
from fleetpilot.gateway.pipeline import (
    Answer,
    Call,
    Handler,
    Stage,
    Streamed,
    Whole,
    compose,
)
from fleetpilot.gateway.server import pipeline
from fleetpilot.gateway.stages.auth import auth_stage


def call(headers: dict[str, str] | None = None, stream: bool = False) -> Call:
    inbound = Inbound(
        kind="chat", raw=b"{}", body={}, model="m", stream=stream, max_tokens=4,
        prompt_tokens=1, include_usage=False, service_class=ServiceClass.INTERACTIVE,
        ttft_slo=None, request_id="req_t", headers=headers or {},
    )  # fmt: skip
    return Call(inbound, "req_t")


def recording(name: str, log: list[str]) -> Stage:
    async def stage(c: Call, following: Handler) -> Answer:
        log.append(f"{name}>")
        try:
            return await following(c)
        finally:
            log.append(f"<{name}")

    return stage


async def whole(c: Call) -> Answer:
    return Whole(200, "application/json", b"{}", {})


async def test_stages_run_in_order_around_the_terminal() -> None:
    log: list[str] = []
    handler = compose([recording("a", log), recording("b", log)], whole)
    answer = await handler(call())
    assert isinstance(answer, Whole) and log == ["a>", "b>", "<b", "<a"]
    assert compose([], whole) is whole  # no stage on: the terminal itself, nothing between


def holding(held: list[str]) -> Stage:
    """A stage that holds something (a budget hold) and releases it in one place: around a
    whole answer, or when a stream's events end however they end."""

    async def stage(c: Call, following: Handler) -> Answer:
        held.append("taken")
        try:
            answer = await following(c)
        except BaseException:
            held.append("released")
            raise
        if isinstance(answer, Whole):
            held.append("released")
            return answer

        async def wrapped(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            try:
                async for e in events:
                    yield e
            finally:
                held.append("released")
                await events.aclose()  # type: ignore[attr-defined]

        return Streamed(answer.headers, wrapped(answer.events))

    return stage


async def test_a_hold_is_released_on_failure_on_a_whole_answer_and_on_a_stream_cut_short() -> None:
    async def failing(c: Call) -> Answer:
        raise UpstreamUnavailable("no replica")

    closed: list[str] = []

    async def streaming(c: Call) -> Answer:
        async def events() -> AsyncIterator[bytes]:
            try:
                for i in range(100):
                    yield b"%d" % i
            finally:
                closed.append("upstream closed")

        return Streamed({}, events())

    held: list[str] = []
    with pytest.raises(UpstreamUnavailable):
        await compose([holding(held)], failing)(call())
    assert held == ["taken", "released"]
    held.clear()
    await compose([holding(held)], whole)(call())
    assert held == ["taken", "released"]
    held.clear()
    answer = await compose([holding(held)], streaming)(call(stream=True))
    assert isinstance(answer, Streamed)
    got = []
    async for e in answer.events:  # a client that reads three events and leaves
        got.append(e)
        if len(got) == 3:
            break
    await answer.events.aclose()  # type: ignore[attr-defined]  # what the fronts do
    assert got == [b"0", b"1", b"2"]
    assert held == ["taken", "released"] and closed == ["upstream closed"]


async def test_auth_stage_sets_the_principal_or_refuses() -> None:
    keys = ClientKeys((hash_key("k-1"),))
    handler = compose([auth_stage(keys)], whole)
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "k-1"}):
        with pytest.raises(Unauthorized):
            await handler(call(headers))
    c = call({"authorization": "Bearer k-1"})
    await handler(c)
    assert c.principal is not None and c.principal.label == "key:" + hash_key("k-1")[:8]


def test_the_gateway_composes_only_the_stages_that_are_on() -> None:
    sentinel = whole  # any terminal
    assert pipeline(FleetConfig(), sentinel) is sentinel  # type: ignore[arg-type]
    cfg = FleetConfig.model_validate({"gateway": {"client_keys": [hash_key("k")]}})
    assert pipeline(cfg, sentinel) is not sentinel  # type: ignore[arg-type]


def test_the_per_event_histogram_renders_as_prometheus_histograms_do() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from fleetpilot.gateway.metrics import EventHistogram

    ours_r, theirs_r = CollectorRegistry(), CollectorRegistry()
    bounds = (0.005, 0.02, 0.08)
    ours = EventHistogram("gap_seconds", "gap", ["pool"], bounds, ours_r).labels("p")
    theirs = Histogram("gap_seconds", "gap", ["pool"], buckets=bounds, registry=theirs_r)
    for v in (0.001, 0.005, 0.02, 0.03, 0.5, 0.005):
        ours.observe(v)
        theirs.labels("p").observe(v)
    lines = {
        r: sorted(
            line
            for line in generate_latest(r).decode().splitlines()
            if line.startswith("gap_seconds_") and "_created" not in line
        )
        for r in (ours_r, theirs_r)
    }
    assert lines[ours_r] == lines[theirs_r] and lines[ours_r]
