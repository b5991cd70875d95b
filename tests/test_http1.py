"""The gateway's HTTP/1.1 client against a scripted server on loopback: framing, reuse,
timeouts and failures, each mapped by ``Upstream`` to the error the proxy retries on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from fleetpilot.errors import ReplicaGone, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from fleetpilot.gateway.http1 import BadResponse, Http1Client, ServerDisconnected
from fleetpilot.gateway.upstream import Upstream

# A script answers each request on a connection: (request index on this connection) -> bytes
# to write, or None to stay silent; "close" after the bytes closes the connection.
Script = Callable[[int], tuple[bytes | None, bool]]


class _Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                out, close = self.script(n)
                n += 1
                if out is None:
                    await reader.read()  # silent until the client gives up
                    break
                writer.write(out or b"")
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


Serve = Callable[[Script], Awaitable[_Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[_Server] = []

    async def start(script: Script) -> _Server:
        s = _Server(script)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n%s" % extra + (
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


async def _upstream() -> Upstream:
    up = Upstream()
    await up.start()
    return up


async def test_content_length_bodies_reuse_one_connection(serve: Serve) -> None:
    srv = await serve(lambda n: (_ok(b'{"n": %d}' % n), False))
    up = await _upstream()
    for n in range(3):
        resp = await up.send(srv.url + "/v1/chat/completions", b'{"x": 1}')
        assert (resp.status, resp.content_type) == (200, "application/json")
        assert await resp.read() == b'{"n": %d}' % n
    assert srv.connections == 1 and up.client.in_use == 0
    first = srv.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 8\r\n" in first and first.endswith(b'\r\n\r\n{"x": 1}')
    await up.close()


async def test_chunked_stream_is_read_line_by_line(serve: Serve) -> None:
    events = [b'data: {"a": 1}\n\n', b'data: {"b"', b": 2}\n\ndata: [DONE]\n\n"]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    srv = await serve(lambda n: (head + chunks, False))
    up = await _upstream()
    resp = await up.send(srv.url + "/v1/completions", b"{}")
    assert [p async for p in resp.events()] == [b'{"a": 1}', b'{"b": 2}', b"[DONE]"]
    resp.close()
    resp = await up.send(srv.url + "/v1/completions", b"{}")  # the connection was reusable
    assert [p async for p in resp.events()][-1] == b"[DONE]"
    resp.close()
    assert srv.connections == 1 and up.client.in_use == 0
    await up.close()


async def test_server_closing_kept_alive_connections_is_not_a_failure(serve: Serve) -> None:
    srv = await serve(lambda n: (_ok(b"{}", b"Connection: close\r\n"), True))
    up = await _upstream()
    for _ in range(3):
        resp = await up.send(srv.url + "/v1/completions", b"{}")
        assert await resp.read() == b"{}"
    assert srv.connections == 3 and up.client.in_use == 0
    await up.close()


async def test_silence_times_out_and_refusal_is_unavailable(serve: Serve) -> None:
    srv = await serve(lambda n: (None, False))
    up = await _upstream()
    url = srv.url
    with pytest.raises(UpstreamTimeout):
        await up.send(url + "/v1/completions", b"{}", read_timeout=0.2)
    assert srv.server is not None
    srv.server.close()
    await srv.server.wait_closed()
    with pytest.raises(UpstreamUnavailable):
        await up.send(url + "/v1/completions", b"{}")
    assert up.client.in_use == 0
    await up.close()


async def test_a_body_cut_short_or_a_stalled_stream_is_replica_gone(serve: Serve) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{partial"
    stall = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n"
    srv = await serve(lambda n: (cut, True))
    slow = await serve(lambda n: (stall, False))
    up = await _upstream()
    resp = await up.send(srv.url + "/v1/completions", b"{}")
    with pytest.raises(ReplicaGone):
        await resp.read()
    resp = await up.send(slow.url + "/v1/completions", b"{}", read_timeout=0.2)
    with pytest.raises(ReplicaGone):
        _ = [p async for p in resp.events()]
    assert up.client.in_use == 0
    await up.close()


async def test_5xx_is_an_upstream_status_and_the_connection_is_kept(serve: Serve) -> None:
    err = b"HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
    srv = await serve(lambda n: (err, False) if n == 0 else (_ok(b"{}"), False))
    up = await _upstream()
    with pytest.raises(UpstreamStatus, match="status 503") as caught:
        await up.send(srv.url + "/v1/completions", b"{}")
    assert caught.value.detail is not None and caught.value.detail.endswith("busy")
    resp = await up.send(srv.url + "/v1/completions", b"{}")
    assert await resp.read() == b"{}" and srv.connections == 1
    await up.close()


async def test_connections_per_origin_are_capped(serve: Serve) -> None:
    srv = await serve(lambda n: (_ok(b"{}"), False))
    client = Http1Client(limit_per_host=2)

    async def one() -> bytes:
        resp = await client.request("POST", srv.url + "/x", b"{}", read_timeout=5)
        await asyncio.sleep(0.01)
        return await resp.read()

    assert await asyncio.gather(*(one() for _ in range(10))) == [b"{}"] * 10
    assert srv.connections == 2 and client.in_use == 0
    await client.close()


async def test_a_large_stream_pauses_the_socket_and_still_arrives_whole(serve: Serve) -> None:
    long_line = b"data: " + b"x" * 400_000 + b"\n"  # over the high-water mark, with no newline
    lines = [long_line] + [b"data: %d\n" % i for i in range(20_000)]
    body = b"".join(lines)
    srv = await serve(
        lambda n: (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body, False)
    )
    client = Http1Client()
    resp = await client.request("POST", srv.url + "/x", b"{}", read_timeout=5)
    got = []
    while line := await resp.readline():
        got.append(line)
        if len(got) % 1000 == 0:
            await asyncio.sleep(0)  # a slow reader
    assert got == lines and client.in_use == 0
    await client.close()


async def _one(client: Http1Client, url: str, method: str = "POST") -> tuple[int, str, bytes]:
    resp = await client.request(method, url, b"{}" if method == "POST" else b"", read_timeout=5)
    return resp.status, resp.content_type, await resp.read()


async def test_close_delimited_body_ends_with_the_connection(serve: Serve) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    srv = await serve(lambda n: (raw, True))
    client = Http1Client()
    assert await _one(client, srv.url + "/x") == (200, "text/plain", b"until the end")
    assert await _one(client, srv.url + "/x") == (200, "text/plain", b"until the end")
    assert srv.connections == 2 and client.in_use == 0  # never reused


async def test_connection_close_is_not_reused_and_head_ends_with_its_head(serve: Serve) -> None:
    srv = await serve(lambda n: (_ok(b"{}", b"Connection: close\r\n"), False))
    client = Http1Client()
    assert (await _one(client, srv.url + "/x"))[2] == b"{}"
    assert (await _one(client, srv.url + "/x"))[2] == b"{}"
    assert srv.connections == 2
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
    srv2 = await serve(lambda n: (head if n == 0 else _ok(b"[]"), False))
    assert await _one(client, srv2.url + "/x", "HEAD") == (200, "", b"")
    assert (await _one(client, srv2.url + "/x"))[2] == b"[]"
    assert srv2.connections == 1 and client.in_use == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    ],
)
async def test_what_is_not_http_is_a_bad_response(serve: Serve, raw: bytes) -> None:
    srv = await serve(lambda n: (raw, False))
    client = Http1Client()
    with pytest.raises(BadResponse):
        await _one(client, srv.url + "/x")
    assert client.in_use == 0


async def test_cut_mid_chunk_is_a_disconnect_and_extra_bytes_drop_the_connection(
    serve: Serve,
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly"
    srv = await serve(lambda n: (cut, True))
    client = Http1Client()
    with pytest.raises(ServerDisconnected):
        await _one(client, srv.url + "/x")
    extra = await serve(lambda n: (_ok(b"{}") + b"HTTP/1.1 200 OK\r\n", False))
    assert (await _one(client, extra.url + "/x"))[2] == b"{}"
    assert (await _one(client, extra.url + "/x"))[2] == b"{}"
    assert extra.connections == 2 and client.in_use == 0


async def _paced_stream(events: int, gap: float, then_stall: bool) -> tuple[asyncio.Server, str]:
    """A server that sends one SSE event per chunk every ``gap`` s, each its own write, and
    then either ends the stream or goes silent with it open."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(events):
                frame = b"data: %d\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                await writer.drain()
                await asyncio.sleep(gap)
            if then_stall:
                await reader.read()
            else:
                frame = b"data: [DONE]\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(frame), frame))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/completions"


async def test_diverted_events_and_read_events_keep_the_stream_s_order() -> None:
    server, url = await _paced_stream(40, 0.002, then_stall=False)
    up = await _upstream()
    seen: list[tuple[str, bytes]] = []
    resp = await up.send(url, b"{}")

    def take(payload: bytes) -> bool:
        if int(payload) % 7 == 3:  # declined: the reader gets it, and whatever follows it
            return False
        seen.append(("listener", payload))
        return True

    resp.divert(take)
    async for payload in resp.events():
        seen.append(("reader", payload))
        await asyncio.sleep(0.005)  # a slow reader: events pile up behind a declined one
    assert [p for _, p in seen] == [b"%d" % i for i in range(40)] + [b"[DONE]"]
    by = {who for who, _ in seen}
    assert by == {"listener", "reader"}  # both paths took part
    resp.close()
    assert up.client.in_use == 0
    server.close()
    await up.close()


async def test_a_diverted_stream_is_timed_by_its_silence_not_by_its_length() -> None:
    """The reader sleeps while a listener takes the events, so its one wait outlives the
    read timeout several times over; only silence may end the stream."""
    server, url = await _paced_stream(12, 0.05, then_stall=True)  # 0.6 s of events, then none
    up = await _upstream()
    resp = await up.send(url, b"{}", read_timeout=0.2)
    got: list[bytes] = []
    resp.divert(lambda p: got.append(p) is None)
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(ReplicaGone):
        async for p in resp.events():
            got.append(p)  # at most what was in before the listener was set
    elapsed = asyncio.get_running_loop().time() - t0
    assert got == [b"%d" % i for i in range(12)]  # every event arrived before the stall
    assert 0.6 <= elapsed < 1.5
    assert up.client.in_use == 0
    server.close()
    await up.close()
