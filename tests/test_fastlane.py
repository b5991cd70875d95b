"""The gateway's front door: the fast lane answers plain non-streamed POSTs itself and hands
every other request, with the bytes already read, to aiohttp — on the same connection."""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass, field

import httptools
import openai
import pytest

from fleetpilot.gateway.server import FLEET

from conftest import Emulators, fleet, serve_gateway

MODEL = "llama-3.1-8b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def pool(urls: list[str]) -> dict[str, object]:
    return {"name": "p", "model": MODEL, "accelerator": "A10G", "replicas": urls}


def post(body: dict[str, object] | bytes, path: str = "/v1/chat/completions", **hdrs: str) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


GET_MODELS = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n"


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)

    def json(self) -> dict[str, object]:
        return json.loads(bytes(self.body))  # type: ignore[no-any-return]


class Conn:
    """One raw keep-alive connection; one llhttp parser reads its responses in order, however
    they are framed and however many arrive in one read (pipelining)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = httptools.HttpResponseParser(self)
        self.current = Response()
        self.done: collections.deque[Response] = collections.deque()

    @classmethod
    async def open(cls, url: str) -> Conn:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.done.append(self.current)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def response(self, timeout: float = 10.0) -> Response:
        async with asyncio.timeout(timeout):
            while not self.done:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed before the response was complete")
                self.parser.feed_data(data)
        return self.done.popleft()

    async def closed(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


@pytest.mark.parametrize("lane_streams", [False, True])
async def test_fast_lane_serves_plain_posts_and_streams_or_hands_streams_to_aiohttp(
    emulators: Emulators, lane_streams: bool
) -> None:
    emu = emulators.start("A10G", time_scale=0.05)
    async with serve_gateway(fleet([pool([emu.url])], fast_lane_streams=lane_streams)) as gw:
        lane = gw.listening
        conn = await Conn.open(gw.url)
        # a plain POST: answered by the fast lane, connection kept
        await conn.send(post(CHAT))
        r = await conn.response()
        assert r.status == 200, r.body
        assert r.json()["usage"]["completion_tokens"] == 3  # type: ignore[index]
        assert r.headers["x-fleetpilot-attempts"] == "1" and "date" in r.headers
        assert (lane.served, lane.handed_over) == (1, 0)
        # a stream on the same connection: the fast lane streams it (chunked), or aiohttp
        # takes the connection over and streams it
        for _ in range(2):
            await conn.send(post({**CHAT, "stream": True}))
            r = await conn.response()
            assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert bytes(r.body).rstrip().endswith(b"data: [DONE]")
            assert bytes(r.body).count(b"data: ") == 3 + 2  # a role chunk, 3 tokens, [DONE]
        assert (lane.served, lane.handed_over) == ((3, 0) if lane_streams else (1, 1))
        # and the connection still serves plain POSTs (aiohttp's, once it took over)
        await conn.send(post(CHAT))
        r = await conn.response()
        assert r.status == 200 and r.json()["choices"]
        assert lane.served == (4 if lane_streams else 1)
        conn.close()

        # the openai client's plain and streamed requests go through the fast lane
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        before = lane.served
        for _ in range(3):
            out = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4
            )
            assert out.usage is not None and out.usage.completion_tokens == 4
            chunks = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                stream=True,
            )  # fmt: skip
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            assert text == " tok0 tok1 tok2 tok3"
        if lane_streams:  # else each stream moves its connection to aiohttp for good
            assert lane.served == before + 6 and lane.handed_over == 0
        await client.close()


async def test_pipelined_requests_are_answered_in_order_across_the_hand_over(
    emulators: Emulators,
) -> None:
    emu = emulators.start("A10G", time_scale=0.05)
    async with serve_gateway(fleet([pool([emu.url])])) as gw:
        conn = await Conn.open(gw.url)
        # two plain POSTs then a GET, in one write: the GET is handed over with the bytes
        # that follow the second POST
        first = {**CHAT, "max_tokens": 2}
        second = {**CHAT, "max_tokens": 5}
        await conn.send(post(first) + post(second) + GET_MODELS)
        statuses, tokens = [], []
        for _ in range(3):
            r = await conn.response()
            statuses.append(r.status)
            body = r.json()
            if "usage" in body:
                tokens.append(body["usage"]["completion_tokens"])  # type: ignore[index]
            else:
                assert body["data"][0]["id"] == MODEL  # type: ignore[index]
        assert statuses == [200, 200, 200] and tokens == [2, 5]
        assert gw.listening.served == 2 and gw.listening.handed_over == 1
        conn.close()


async def test_bodies_in_pieces_connection_close_and_errors_match_aiohttp(
    emulators: Emulators,
) -> None:
    emu = emulators.start("A10G", time_scale=0.05)
    answers: dict[bool, list[tuple[int, object]]] = {}
    for fast in (True, False):
        cfg = fleet([pool([emu.url])], max_body_bytes=4096, fast_lane=fast)
        async with serve_gateway(cfg) as gw:
            got: list[tuple[int, object]] = []
            # a body that arrives a few bytes at a time
            conn = await Conn.open(gw.url)
            raw = post(CHAT)
            for i in range(0, len(raw), 7):
                await conn.send(raw[i : i + 7])
                await asyncio.sleep(0.001)
            r = await conn.response()
            got.append((r.status, r.json()["usage"]))  # type: ignore[index]
            # errors: bad JSON, unknown model, over the size limit, unknown route
            for raw in (
                post(b"{nope"),
                post({**CHAT, "model": "nope"}),
                post({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}),
                post(CHAT, path="/v1/nothing"),
            ):
                c = await Conn.open(gw.url)
                await c.send(raw)
                r = await c.response()
                err = r.json()["error"]
                assert set(err) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
                got.append((r.status, err["type"]))  # type: ignore[index]
                c.close()
            # Connection: close is honoured
            c = await Conn.open(gw.url)
            await c.send(post(CHAT, Connection="close"))
            r = await c.response()
            assert r.status == 200 and r.headers.get("connection", "").lower() == "close"
            assert await c.closed()
            conn.close()
            answers[fast] = got
            assert gw.listening.served == (2 if fast else 0)
    assert answers[True] == answers[False]
    assert [s for s, _ in answers[True]] == [200, 400, 404, 413, 404]


async def test_a_body_that_never_comes_gets_400_and_a_client_gone_leaks_nothing(
    emulators: Emulators,
) -> None:
    emu = emulators.start("A10G", time_scale=0.2)
    async with serve_gateway(fleet([pool([emu.url])])) as gw:
        gw.listening.body_timeout_s = 0.3
        conn = await Conn.open(gw.url)
        raw = post(CHAT)
        await conn.send(raw[:-5])  # the head and most of the body, never the rest
        r = await conn.response()
        assert r.status == 400 and "not received in time" in r.json()["error"]["message"]  # type: ignore[index]
        assert await conn.closed()
        # a client that leaves while its request is at the replica: the lease is settled
        for _ in range(5):
            c = await Conn.open(gw.url)
            await c.send(post({**CHAT, "max_tokens": 20}))
            await asyncio.sleep(0.05)
            c.close()
        for _ in range(100):
            await asyncio.sleep(0.05)
            replicas = gw.app[FLEET].replicas
            if all(x.in_flight == 0 for x in replicas) and gw.listening.connections == 0:
                break
        assert all(x.in_flight == 0 and x.remaining_tokens == 0 for x in gw.app[FLEET].replicas)
        assert gw.listening.connections == 0
        # and it still answers
        conn = await Conn.open(gw.url)
        await conn.send(post(CHAT))
        assert (await conn.response()).status == 200
        conn.close()


async def test_bytes_sent_while_an_answer_is_pending_are_bounded(emulators: Emulators) -> None:
    emu = emulators.start("A10G", time_scale=0.5)
    async with serve_gateway(fleet([pool([emu.url])], max_body_bytes=4096)) as gw:
        listening = gw.listening
        conn = await Conn.open(gw.url)
        await conn.send(post({**CHAT, "max_tokens": 40}))  # takes a while at the replica
        await asyncio.sleep(0.05)
        junk = b"x" * (2 * 1024 * 1024)
        conn.writer.write(junk)  # not drained: the gateway stops reading instead
        await asyncio.sleep(0.5)
        (lane,) = listening.lanes
        assert lane.busy and not lane.reading
        assert len(lane.buf) <= listening.max_buffer + 256 * 1024
        r = await conn.response(timeout=20)
        assert r.status == 200 and r.json()["usage"]["completion_tokens"] == 40  # type: ignore[index]
        # the junk is not a request: aiohttp takes it and answers 400
        r = await conn.response(timeout=10)
        assert r.status == 400
        conn.close()
