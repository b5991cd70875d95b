"""The replica emulator, driven over real loopback sockets with the official openai client.

Fidelity tests compare what a client measures with what the perf model says for the same
scenario: a virtual-time replay of :class:`~fleetpilot.core.perf.BatchEngine` at the
measured send times, cross-checked against the closed forms (``predict``, ``step_time``).
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from fleetpilot.catalogue import load_catalogue
from fleetpilot.clock import ManualClock
from fleetpilot.core.model import ReplicaLoad
from fleetpilot.core.perf import predict, step_time
from fleetpilot.emulator import (
    DIE_EXIT_CODE,
    EmulatedReplica,
    EmulatorOptions,
    RunningEmulator,
    start_emulator,
)
from fleetpilot.errors import ConfigError
from fleetpilot.tokens import estimate_tokens

from emulator_helpers import (
    MODEL,
    Arrival,
    EmulatorProcess,
    Timed,
    emulator_process,
    free_port,
    replay,
    timed_chat,
)

FAST = 0.05  # time scale for tests that check behaviour, not timing
TOLERANCE = 0.10
L4 = load_catalogue().profile(MODEL, "L4")


def words(start: int, count: int) -> str:
    return "".join(f" tok{i}" for i in range(start, start + count))


def client_for(url: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0, **kw)


@pytest.fixture
async def emu() -> AsyncIterator[RunningEmulator]:
    opts = EmulatorOptions(accelerator="L4", port=0, time_scale=FAST)
    async with await start_emulator(opts) as running:
        yield running


@pytest.fixture
async def client(emu: RunningEmulator) -> AsyncIterator[openai.AsyncOpenAI]:
    c = client_for(emu.url)
    yield c
    await c.close()


async def set_fault(url: str, **body: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.post(f"{url}/admin/fault", json=body) as r:
        assert r.status == 200, await r.text()
        out: dict[str, Any] = await r.json()
        return out


# ---------------------------------------------------------------------------------------------
# OpenAI surface


async def test_chat_streamed_and_whole(client: openai.AsyncOpenAI, emu: RunningEmulator) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=5
    )
    assert raw.headers["x-emulator-replica"] == emu.url.removeprefix("http://")
    whole = raw.parse()
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == words(0, 5)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (2, 5)
    assert whole.usage.total_tokens == 7

    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-2])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == words(0, 16)  # max_tokens defaults to 16
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16


async def test_completions_streamed_and_whole(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model=MODEL, prompt="one two three", max_tokens=4)
    assert whole.object == "text_completion"
    assert whole.choices[0].text == words(0, 4)
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (3, 4)

    stream = await client.completions.create(
        model=MODEL, prompt="one two three", max_tokens=3, stream=True
    )
    chunks = [c async for c in stream]
    assert [c.choices[0].text for c in chunks] == [" tok0", " tok1", " tok2", ""]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_subprocess_with_sync_client() -> None:
    port = free_port()
    with emulator_process("--accelerator", "L4", "--time-scale", str(FAST), port=port) as proc:
        assert proc.banner == f"emulator {MODEL}@L4 listening on http://127.0.0.1:{port}"
        with openai.OpenAI(base_url=f"{proc.url}/v1", api_key="test", max_retries=0) as c:
            whole = c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_completion_tokens=7,
            )
            assert whole.choices[0].message.content == words(0, 7)
            assert whole.usage is not None and whole.usage.completion_tokens == 7
            stream = c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            assert text == words(0, 6)
            assert [m.id for m in c.models.list().data] == [MODEL]
        started = time.monotonic()
        assert proc.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5


async def test_models_health_embeddings(client: openai.AsyncOpenAI, emu: RunningEmulator) -> None:
    models = await client.models.list()
    assert [(m.id, m.object) for m in models.data] == [(MODEL, "model")]
    async with aiohttp.ClientSession() as s, s.get(f"{emu.url}/health") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"

    # The openai client asks for base64 by default and decodes it.
    got = await client.embeddings.create(model=MODEL, input=["alpha beta", "gamma"])
    assert [d.index for d in got.data] == [0, 1]
    a, b = (d.embedding for d in got.data)
    assert len(a) == 64 and math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-5)
    assert a != b
    again = await client.embeddings.create(model=MODEL, input="alpha beta", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(a, rel=1e-6)
    assert got.usage.prompt_tokens == 3
    small = await client.embeddings.create(model=MODEL, input="alpha beta", dimensions=8)
    assert len(small.data[0].embedding) == 8


async def test_bad_requests_are_openai_shaped(emu: RunningEmulator) -> None:
    chat = f"{emu.url}/v1/chat/completions"
    cases: list[tuple[str, Any, int, str | None]] = [
        (chat, b"{not json", 400, None),
        (chat, [1, 2], 400, None),
        (chat, {"model": MODEL}, 400, "messages"),
        (
            chat,
            {"model": MODEL, "messages": [{"role": "user"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        (chat, {"model": MODEL, "messages": [{"role": "user"}], "stream": "yes"}, 400, "stream"),
        (chat, {"model": "gpt-9", "messages": [{"role": "user"}]}, 404, "model"),
        (
            chat,
            {"model": MODEL, "messages": [{"role": "user"}], "continue_final_message": True},
            400,
            "continue_final_message",
        ),
        (f"{emu.url}/v1/completions", {"model": MODEL, "prompt": 3}, 400, "prompt"),
        (f"{emu.url}/v1/completions", {"model": "x", "prompt": "a"}, 404, "model"),
        (f"{emu.url}/v1/embeddings", {"model": MODEL, "input": []}, 400, "input"),
    ]
    async with aiohttp.ClientSession() as s:
        for url, body, status, param in cases:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with s.post(url, data=data) as r:
                assert r.status == status, (body, await r.text())
                err = (await r.json())["error"]
                assert set(err) == {"message", "type", "param", "code"}
                assert err["type"] == "invalid_request_error"
                assert err["param"] == param
                if status == 404:
                    assert err["code"] == "model_not_found"


# ---------------------------------------------------------------------------------------------
# Continuation (the gateway resumes a stream on another replica)


async def test_continuation_gives_exactly_the_remaining_words(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "tell me a story"}]
    full = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    full_text = full.choices[0].message.content
    assert full_text is not None

    partial = ""
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, stream=True
    )
    async for chunk in stream:  # the replica "dies" after five tokens
        partial += chunk.choices[0].delta.content or ""
        if len(partial.split()) == 5:
            break
    await stream.close()

    rest = await client.chat.completions.create(
        model=MODEL,
        messages=[*messages, {"role": "assistant", "content": partial}],
        max_tokens=7,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert rest.usage is not None and rest.usage.completion_tokens == 7
    assert partial + (rest.choices[0].message.content or "") == full_text

    text_full = await client.completions.create(model=MODEL, prompt="once", max_tokens=9)
    head = text_full.choices[0].text[: len(words(0, 4))]
    resumed = await client.completions.create(
        model=MODEL,
        prompt="once" + head,
        max_tokens=5,
        stream=True,
        extra_body={"fleetpilot_continue_from": 4},
    )
    tail = "".join([c.choices[0].text async for c in resumed])
    assert head + tail == text_full.choices[0].text


async def test_client_disconnect_cancels_its_sequence(
    client: openai.AsyncOpenAI, emu: RunningEmulator
) -> None:
    replica = emu.server.replica
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=500, stream=True
    )
    async for _ in stream:
        break
    assert replica.load().running == 1
    await stream.close()
    for _ in range(100):
        if not replica.engine.busy:
            break
        await asyncio.sleep(0.01)
    assert replica.load() == ReplicaLoad()


# ---------------------------------------------------------------------------------------------
# Metrics

_SMALL_CATALOGUE = """
accelerators: {T4: {memory_gb: 16, memory_bandwidth_gbps: 320}}
prices: {T4: {on_demand: 0.5}}
profiles:
  tiny: {T4: {prefill_rate: 1000, max_batch: 2, step_points: [[1, 0.05], [2, 0.06]]}}
"""


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_while_in_flight(tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(_SMALL_CATALOGUE)
    opts = EmulatorOptions(model="tiny", accelerator="T4", port=0, catalogue=catalogue)
    async with await start_emulator(opts) as emu:
        c = client_for(emu.url)
        tasks = [
            asyncio.create_task(
                c.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "a b c"}], max_tokens=8
                )
            )
            for _ in range(4)
        ]
        await asyncio.sleep(0.15)  # two in the batch (max_batch 2), two waiting
        async with aiohttp.ClientSession() as s, s.get(f"{emu.url}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            during = await r.text()
        assert 'model_name="tiny"' in during
        assert _gauge(during, "vllm:num_requests_running") == 2
        assert _gauge(during, "vllm:num_requests_waiting") == 2
        assert _gauge(during, "vllm:gpu_cache_usage_perc") == 1.0
        assert _gauge(during, "vllm:kv_cache_usage_perc") == 1.0
        await asyncio.gather(*tasks)
        async with aiohttp.ClientSession() as s, s.get(f"{emu.url}/metrics") as r:
            after = await r.text()
        await c.close()
    assert _gauge(after, "vllm:num_requests_running") == 0
    assert _gauge(after, "vllm:prompt_tokens_total") == 4 * 3
    assert _gauge(after, "vllm:generation_tokens_total") == 4 * 8
    assert "vllm:time_to_first_token_seconds_bucket" in after


# ---------------------------------------------------------------------------------------------
# Fidelity: what the client measures is what the perf model says (time scale 1, L4)

N_TOKENS = 20
PROMPT = "word " * 200  # 250 tokens: TTFT is mostly prefill, as with most real prompts
P = estimate_tokens(PROMPT)


@pytest.fixture(scope="module")
def timed_replica() -> Iterator[EmulatorProcess]:
    with emulator_process("--accelerator", "L4", "--time-scale", "1.0") as proc:
        yield proc


def _err(measured: float, predicted: float) -> float:
    return abs(measured - predicted) / predicted


# The perf model has no term for the HTTP hop: a time to first token measured by the openai
# client also holds the request's trip over loopback and the client's own work, 5-30 ms on
# this 2-core machine depending on what else runs.  TTFT checks allow that much on top of
# the 10%; a missing prefill or step (50+ ms here) still fails them.
TRANSPORT_SLACK_S = 0.035


def _check(label: str, measured: float, predicted: float) -> None:
    err = _err(measured, predicted)
    ms = f"measured {measured * 1e3:.1f} ms, model {predicted * 1e3:.1f} ms"
    print(f"fidelity {label}: {ms}, error {err:.1%}")
    slack = TRANSPORT_SLACK_S if "TTFT" in label else 0.0
    assert abs(measured - predicted) <= TOLERANCE * predicted + slack, (
        f"{label}: measured {measured:.4f}s vs model {predicted:.4f}s"
    )


async def test_fidelity_single_request_on_idle_replica(timed_replica: EmulatorProcess) -> None:
    c = client_for(timed_replica.url)
    await timed_chat(c, "warm up", 1)
    # A longer prompt than elsewhere: the client's and loopback's fixed ~5-15 ms (more on a
    # busy machine) is then a small share of the TTFT being checked.  Median of three runs.
    prompt = "word " * 800
    runs = [await timed_chat(c, prompt, N_TOKENS) for _ in range(3)]
    await c.close()
    assert all(got.text == words(0, N_TOKENS) for got in runs)
    expected = predict(L4, ReplicaLoad(), estimate_tokens(prompt), N_TOKENS)
    _check("idle n=1 TTFT", statistics.median(g.ttft for g in runs), expected.ttft)
    _check("idle n=1 ITL", statistics.median(g.itl for g in runs), step_time(L4, 1))
    e2e = statistics.median(g.token_at[-1] - g.sent for g in runs)
    _check("idle n=1 e2e", e2e, expected.e2e)


@pytest.mark.parametrize("n", [1, 4, 8, 16])
async def test_fidelity_simultaneous_arrivals(timed_replica: EmulatorProcess, n: int) -> None:
    """n identical requests reach the replica together and join one step.

    A client cannot make n requests land inside one event-loop turn of an idle server, so
    they are sent while a one-token request with a long prompt holds the replica for one
    step (~0.3 s); they all join the next step, where the batch is empty: the model says
    their first token comes ``step_time(n) + n * prompt / prefill_rate`` after that step
    starts, then one token every ``step_time(n)``.
    """
    blocker_prompt = "w " * 1000
    c = client_for(timed_replica.url)
    await timed_chat(c, "warm up", 1)
    t0 = time.perf_counter() + 0.01
    blocker = asyncio.create_task(timed_chat(c, blocker_prompt, 1, at=t0))
    group: list[Timed] = await asyncio.gather(
        *(timed_chat(c, PROMPT, N_TOKENS, at=t0 + 0.03) for _ in range(n))
    )
    first = await blocker
    await c.close()

    arrivals = [Arrival(0.0, estimate_tokens(blocker_prompt), 1)]
    arrivals += [Arrival(g.sent - first.sent, P, N_TOKENS) for g in group]
    model = replay(L4, arrivals)
    assert sorted(model.steps[1].admitted) == list(range(1, n + 1)), "one step for all"
    group_step = step_time(L4, n) + n * P / L4.prefill_rate
    assert model.token_at[1][0] - model.token_at[0][0] == pytest.approx(group_step)

    for g in group:
        assert g.text == words(0, N_TOKENS)
    measured_step = sum(g.token_at[0] - first.token_at[0] for g in group) / n
    _check(f"together n={n} first-token step", measured_step, group_step)
    mean_ttft = sum(g.ttft for g in group) / n
    _check(
        f"together n={n} TTFT", mean_ttft, sum(model.ttft(i, arrivals) for i in range(1, n + 1)) / n
    )
    for g in group:
        assert _err(g.itl, step_time(L4, n)) < TOLERANCE
    _check(f"together n={n} ITL", sum(g.itl for g in group) / n, step_time(L4, n))


async def test_fidelity_staggered_arrivals(timed_replica: EmulatorProcess) -> None:
    """Requests arrive one by one into a running batch, each in the middle of a decode step.

    There ``predict``'s expected half-step wait is the exact wait, so its TTFT is the
    model's answer for each arrival; per-token times come from a replay of the engine.
    """
    k = 4
    arrivals = [Arrival(0.0, P, N_TOKENS)]
    for j in range(1, k):
        plan = replay(L4, arrivals)
        admitted = next(i for i, s in enumerate(plan.steps) if j - 1 in s.admitted)
        decode = plan.steps[admitted + 1]
        assert decode.admitted == () and decode.batch == j
        arrivals.append(Arrival((decode.start + decode.end) / 2, P, N_TOKENS))
    plan = replay(L4, arrivals)
    for j in range(k):
        by_formula = predict(L4, ReplicaLoad(running=j), P, N_TOKENS).ttft
        assert plan.ttft(j, arrivals) == pytest.approx(by_formula)

    # Up to three tries: a stall of the client or the replica (a 160 ms one was seen once in
    # a fresh-clone run, on two cores shared with the rest of the suite) moves an arrival
    # across a step boundary, which no model of the engine predicts.  Every try checks it all;
    # a model that is wrong fails all three.
    failures: list[str] = []
    for _ in range(3):
        c = client_for(timed_replica.url)
        await timed_chat(c, "warm up", 1)
        t0 = time.perf_counter() + 0.01
        got: list[Timed] = await asyncio.gather(
            *(timed_chat(c, PROMPT, N_TOKENS, at=t0 + a.at) for a in arrivals)
        )
        await c.close()

        actual = [Arrival(g.sent - got[0].sent, P, N_TOKENS) for g in got]
        model = replay(L4, actual)
        try:
            for j, g in enumerate(got):
                assert g.text == words(0, N_TOKENS)
                _check(f"staggered #{j} TTFT", g.ttft, model.ttft(j, actual))
                _check(f"staggered #{j} ITL", g.itl, model.itl(j))
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
            continue
        return
    pytest.fail("every try missed the model: " + "; ".join(failures))


# ---------------------------------------------------------------------------------------------
# Faults


async def test_fault_refuse_then_recover(client: openai.AsyncOpenAI, emu: RunningEmulator) -> None:
    await set_fault(emu.url, fault="refuse")
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
    async with aiohttp.ClientSession() as s, s.get(f"{emu.url}/health") as r:
        assert r.status == 503
        assert (await r.json())["fault"] == "refuse"
    assert await set_fault(emu.url, fault="none") == {
        "fault": "none",
        "die_after_tokens": 0,
        "slowdown": 1.0,
    }
    ok = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    assert ok.choices[0].message.content == words(0, 2)


async def test_fault_error500(client: openai.AsyncOpenAI, emu: RunningEmulator) -> None:
    await set_fault(emu.url, fault="error500")
    with pytest.raises(openai.InternalServerError) as info:
        await client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert info.value.status_code == 500
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "server_error"


async def test_fault_hang_until_client_gives_up(emu: RunningEmulator) -> None:
    await set_fault(emu.url, fault="hang")
    c = client_for(emu.url, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
    assert 0.4 < time.monotonic() - started < 2
    await set_fault(emu.url, fault="none")
    ok = await c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    assert ok.choices[0].message.content == words(0, 2)
    await c.close()


async def test_fault_slow_multiplies_step_time() -> None:
    scale = 0.5
    opts = EmulatorOptions(accelerator="L4", port=0, time_scale=scale, fault="slow", slowdown=3)
    async with await start_emulator(opts) as slow:
        c = client_for(slow.url)
        await timed_chat(c, "warm up", 1)
        got = await timed_chat(c, "x", 8)
        _check("slow x3 ITL", got.itl, 3 * step_time(L4, 1) * scale)
        await set_fault(slow.url, fault="none")
        normal = await timed_chat(c, "x", 8)
        _check("slow fault cleared ITL", normal.itl, step_time(L4, 1) * scale)
        await c.close()


async def test_fault_die_after_in_process(emu: RunningEmulator) -> None:
    await set_fault(emu.url, fault="die_after", die_after_tokens=6)
    c = client_for(emu.url)
    got: list[str] = []
    with pytest.raises((openai.APIError, aiohttp.ClientError, OSError)):
        stream = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=20, stream=True
        )
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == words(0, 6)
    await asyncio.sleep(0.05)
    with pytest.raises(openai.APIConnectionError):  # no longer listening
        await c.models.list()
    await c.close()


def test_fault_die_after_kills_the_process() -> None:
    args = ("--accelerator", "L4", "--time-scale", str(FAST))
    with emulator_process(*args, "--fault", "die_after", "--die-after-tokens", "5") as proc:
        got: list[str] = []
        with (
            openai.OpenAI(base_url=f"{proc.url}/v1", api_key="t", max_retries=0) as c,
            pytest.raises(openai.APIConnectionError),
        ):
            stream = c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=20, stream=True
            )
            for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
        assert "".join(got) == words(0, 5)
        assert proc.proc.wait(10) == DIE_EXIT_CODE


# ---------------------------------------------------------------------------------------------
# Configuration and the engine alone


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="fault"):
        EmulatorOptions(fault="explode")
    with pytest.raises(ConfigError, match="die_after_tokens"):
        EmulatorOptions(fault="die_after")
    with pytest.raises(ConfigError, match="time_scale"):
        EmulatorOptions(time_scale=0)
    with pytest.raises(ConfigError, match="no profile"):
        asyncio.run(start_emulator(EmulatorOptions(accelerator="TPU-v9", port=0)))


def test_unknown_model_exits_nonzero_with_a_message() -> None:
    cmd = [sys.executable, "-m", "fleetpilot", "emulate", "--model", "nope", "--port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "no profile for model 'nope'" in done.stderr
    assert "listening" not in done.stdout


async def test_engine_on_a_manual_clock_matches_the_replay() -> None:
    clock = ManualClock()
    replica = EmulatedReplica(L4, clock=clock)
    replica.start()
    gens = [replica.submit(P, 3) for _ in range(2)]
    seen: list[tuple[float, int, int]] = []

    async def consume(k: int) -> None:
        async for i in gens[k]:
            seen.append((clock.now(), k, i))

    tasks = [asyncio.create_task(consume(k)) for k in range(2)]
    tick = 0.0005
    while not all(t.done() for t in tasks):
        for _ in range(4):
            await asyncio.sleep(0)
        clock.advance(tick)
    await replica.close()
    model = replay(L4, [Arrival(0.0, P, 3), Arrival(0.0, P, 3)])
    assert [(k, i) for _, k, i in seen] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    for t, k, i in seen:  # each token on the first tick at or after its step's end
        assert model.token_at[k][i] <= t + 1e-9 < model.token_at[k][i] + tick
