"""The gateway's front door: a fast lane for plain API POSTs, aiohttp for everything else.

Why a second HTTP front: at concurrency 1 the latency the gateway adds is CPU spent on a core
that went cold while the replica worked, and aiohttp's server (request object, stream reader,
router, middleware, response object) was most of what fleetpilot's own code did not account
for.  Measured with ``bench/gateway_overhead.py --gateway-cmd`` on two bare proxies around the
same upstream client: an aiohttp one added 0.43–0.55 ms over a byte relay, an httptools one
0.04–0.16 ms.

The hot path is narrow: ``POST /v1/chat/completions`` (or ``/v1/completions``,
``/v1/embeddings``) over HTTP/1.1, a JSON body framed by ``Content-Length``, streamed or not
(``gateway.fast_lane_streams``).  One :class:`FastLane` protocol per connection serves exactly
that: llhttp (``httptools``) checks the head, :func:`~fleetpilot.gateway.intake.admit` the
body, :mod:`the pipeline <fleetpilot.gateway.pipeline>` does the rest, as it does for
aiohttp, and the answer goes out whole or as chunked server-sent events.

Everything else — other paths and methods, chunked or oversized bodies, ``Expect``,
upgrades, heads llhttp rejects, requests :func:`~fleetpilot.gateway.intake.admit` rejects —
is *handed over*: the connection, with the bytes already read, goes to aiohttp's protocol
(:mod:`fleetpilot.gateway.aiohttp_front`) for the rest of its life.  Every edge case (error
JSON, 413 before reading, slow bodies, SSE, disconnects) has one behaviour, written once in
:mod:`fleetpilot.gateway.server`; both fronts time heads, bodies and idle connections alike.

A client that leaves while its request is served cancels it (the replica's connection is
dropped, so it stops generating); an exception in a protocol callback is answered with a 500
in OpenAI's shape and logged, never a connection closed with nothing said.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
from aiohttp import web

from fleetpilot.errors import ApiError, BadRequest
from fleetpilot.gateway.aiohttp_front import protocol_factory
from fleetpilot.gateway.appkeys import CONFIG, FLEET, PIPELINE
from fleetpilot.gateway.http1 import no_delay
from fleetpilot.gateway.intake import Inbound, admit, new_request_id
from fleetpilot.gateway.pipeline import Call, Streamed, Whole, error_reply

__all__ = ["FastLane", "Listening", "listen"]

log = logging.getLogger("fleetpilot.gateway")

_LANES = {
    b"POST /v1/chat/completions HTTP/1.1": "chat",
    b"POST /v1/completions HTTP/1.1": "completions",
    b"POST /v1/embeddings HTTP/1.1": "embeddings",
}
_MAX_HEAD = 8190  # aiohttp's line limit; a longer head goes to aiohttp, which decides
_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}


class _Handover(Exception):
    """This request is not the fast lane's: aiohttp takes the connection."""


@dataclass(slots=True)
class _Head:
    """What llhttp read from one request head."""

    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key in ("transfer-encoding", "expect", "upgrade") or key in self.headers:
            raise _Handover  # framing or semantics the fast lane leaves to aiohttp
        self.headers[key] = value.decode("latin-1")
        if key == "content-length":
            self.length = int(value)  # llhttp has checked it is digits


# (lane, head, its parser, where the body starts in buf)
_Front = tuple[str, _Head, httptools.HttpRequestParser, int]


class _Date:
    """The ``Date`` header, formatted once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = email.utils.formatdate(now, usegmt=True).encode()
        return self.value


def _event_chunk(payload: bytes) -> bytes:
    """One SSE event as one chunk of a chunked body: "data: " + payload + "\n\n"."""
    return b"%x\r\ndata: %s\n\n\r\n" % (len(payload) + 8, payload)


class FastLane(asyncio.Protocol):
    """One client connection, until it is closed or handed over to aiohttp."""

    def __init__(self, listening: Listening) -> None:
        self.listening = listening
        self.app = listening.app
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # a request is being served: later bytes wait in buf
        self.closing = False
        self.eof = False
        self.reading = True
        self.writable = True
        self.timer: asyncio.TimerHandle | None = None
        self.timer_for: str = ""
        self.front: _Front | None = None  # the head of the request at the front of buf
        self.task: asyncio.Task[None] | None = None  # the request being served
        self.drain: asyncio.Future[None] | None = None  # a stream waiting for the client

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)
        self.listening.lanes.add(self)
        self._arm(self.listening.keepalive_s, "idle")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._disarm()
        self.listening.lanes.discard(self)
        self.buf.clear()
        self._wake_drain()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client left: stop its work upstream too

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.busy or not self.writable:  # answer first; what comes meanwhile waits, bounded
            if len(self.buf) > self.listening.max_buffer and self.reading:
                self._pause_reading()
            return
        self._next_safely()

    def eof_received(self) -> bool:
        """The client closed its side.  As aiohttp does, a request still being served is
        taken as abandoned: its work upstream is cancelled and the connection closed (a
        socket closed by a client that left reads exactly like a half-close)."""
        self.eof = True
        return False  # close; connection_lost cancels the request in progress

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._wake_drain()
        if not self.busy and self.buf:
            self._next_safely()

    def _wake_drain(self) -> None:
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    # -- requests ---------------------------------------------------------------------------
    def _next_safely(self) -> None:
        """:meth:`_next`, where a bug still answers (a 500 in OpenAI's shape, logged with its
        traceback) instead of closing the connection with nothing said."""
        try:
            self._next()
        except Exception:
            rid = new_request_id()
            log.exception("%s unhandled error in the fast lane", rid)
            self.busy = False
            self._write(error_reply(ApiError("internal gateway error"), rid), False)
            self._close()

    def _next(self) -> None:
        """Start the request at the front of ``buf``, if it is whole and the lane's."""
        if self.closing or not self.writable:
            return
        buf = self.buf
        if not self.reading and len(buf) <= self.listening.max_buffer:
            self._resume_reading()
        front = self.front or self._read_head()
        if front is None:
            return
        kind, head, parser, body_at = front
        need = body_at + (head.length or 0)
        if len(buf) < need:
            if self.timer_for != "body":
                self._arm(self.listening.body_timeout_s, "body")
            return
        app = self.app
        try:
            inbound = admit(
                kind,
                bytes(buf[body_at:need]),
                head.headers,
                app[CONFIG].gateway,
                app[FLEET],
                new_request_id(),
            )
        except ApiError:
            self._hand_over()  # its error answer is aiohttp's to give, written once
            return
        if inbound.stream and not self.listening.streams:
            self._hand_over()
            return
        del buf[:need]
        self.front = None
        self._disarm()
        self.busy = True
        self.listening.served += 1
        keep_alive = parser.should_keep_alive()
        self.task = asyncio.get_running_loop().create_task(self._serve(inbound, keep_alive))

    def _read_head(self) -> _Front | None:
        """The head at the front of ``buf``, read once per request (a body may take many
        reads); None when it is not whole yet, or when aiohttp took the connection."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._hand_over()
            elif buf:
                if self.timer_for != "head":
                    self._arm(self.listening.header_timeout_s, "head")
            elif self.eof:
                self._close()
            else:
                self._arm(self.listening.keepalive_s, "idle")
            return None
        kind = _LANES.get(bytes(buf[: buf.find(b"\r\n")]))
        if kind is None or end + 4 > _MAX_HEAD:
            self._hand_over()
            return None
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        try:
            parser.feed_data(bytes(buf[: end + 4]))
        except (httptools.HttpParserError, _Handover, ValueError):
            self._hand_over()
            return None
        if head.length is None or head.length > self.listening.max_body:
            self._hand_over()  # no length, or over the limit: aiohttp answers 411 / 413
            return None
        self.front = (kind, head, parser, end + 4)
        return self.front

    async def _serve(self, inbound: Inbound, keep_alive: bool) -> None:
        reply: Whole | None = None
        try:
            answer = await self.app[PIPELINE](Call(inbound, inbound.request_id))
            if isinstance(answer, Whole):
                reply = answer
            elif not await self._stream(answer, keep_alive):
                return  # the connection went away mid-stream
        except asyncio.CancelledError:
            return  # the client left; nobody to answer
        except ApiError as exc:
            reply = error_reply(exc, inbound.request_id)
        except Exception:
            log.exception("%s unhandled error on POST %s", inbound.request_id, inbound.path)
            reply = error_reply(ApiError("internal gateway error"), inbound.request_id)
        finally:
            self.task = None
        if reply is not None:
            self._write(reply, keep_alive)
        self.busy = False
        if not keep_alive or self.eof or self.listening.stopping:
            self._close()
            return
        self._next_safely()

    async def _stream(self, answer: Streamed, keep_alive: bool) -> bool:
        """Send a stream as chunked server-sent events; False if the connection went away.

        A client that reads slowly pauses its stream (and so, through the upstream client's
        flow control, the replica's connection), not the process.
        """
        events = answer.events
        head = [
            b"HTTP/1.1 %d %s\r\n" % (answer.status, _PHRASES.get(answer.status, b"Unknown")),
            b"Transfer-Encoding: chunked\r\nDate: %s\r\n" % self.listening.date(),
        ]
        head.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in answer.headers.items())
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        try:
            self._send(b"".join(head))
            if answer.direct is not None:
                answer.direct(self._event)
            async for payload in events:
                self._send(_event_chunk(payload))
                if not self.writable:
                    await self._drained()
                if self.closing:
                    return False
            self._send(b"0\r\n\r\n")
            return not self.closing
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    def _send(self, data: bytes) -> None:
        """Write at once: replicas pace their events, so one turn of the loop rarely holds
        two of one stream, and deferring each write to the end of the turn (tried) cost more
        than it saved."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _event(self, payload: bytes) -> bool:
        """The stream's sink: one event written now, unless the client is not taking more (the
        stream's reader then waits for it, and so pauses the replica's connection)."""
        transport = self.transport
        if self.closing or not self.writable or transport is None or transport.is_closing():
            return False
        transport.write(_event_chunk(payload))
        return True

    async def _drained(self) -> None:
        if self.writable or self.closing:
            return
        self.drain = asyncio.get_running_loop().create_future()
        try:
            await self.drain
        finally:
            self.drain = None

    def _write(self, reply: Whole, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = [
            b"HTTP/1.1 %d %s\r\n" % (reply.status, _PHRASES.get(reply.status, b"Unknown")),
            b"Content-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n"
            % (reply.content_type.encode("latin-1"), len(reply.body), self.listening.date()),
        ]
        head.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in reply.headers.items())
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + reply.body)

    # -- hand-over, timers, closing ---------------------------------------------------------
    def _hand_over(self) -> None:
        """aiohttp's protocol takes this connection, with every byte not yet answered."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._disarm()
        self.closing = True
        self.listening.lanes.discard(self)
        self.listening.handed_over += 1
        data, self.buf = bytes(self.buf), bytearray()
        proto = self.listening.aiohttp()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if data:
            proto.data_received(data)
        if not self.reading:
            transport.resume_reading()
        if self.eof and not proto.eof_received():
            transport.close()

    def _arm(self, seconds: float, why: str) -> None:
        self._disarm()
        self.timer_for = why
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_for = ""

    def _expired(self) -> None:
        self.timer = None
        if self.timer_for == "body" and not self.busy:
            # as the aiohttp path answers a body that does not come: 400, then close
            err = BadRequest("request body not received in time")
            self._write(error_reply(err, new_request_id()), False)
        self._close()

    def _pause_reading(self) -> None:
        assert self.transport is not None
        self.reading = False
        self.transport.pause_reading()

    def _resume_reading(self) -> None:
        assert self.transport is not None
        self.reading = True
        self.transport.resume_reading()

    def _close(self) -> None:
        self.closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.close()


@dataclass
class Listening:
    """The gateway's listening socket and the connections the fast lane holds."""

    app: web.Application
    runner: web.AppRunner
    aiohttp: Callable[[], asyncio.Protocol]
    max_body: int
    max_buffer: int
    streams: bool = True  # the fast lane serves streams too (False: aiohttp does)
    server: asyncio.Server | None = None
    lanes: set[FastLane] = field(default_factory=set)
    stopping: bool = False
    header_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    keepalive_s: float = 75.0
    served: int = 0  # requests the fast lane answered itself
    handed_over: int = 0  # connections given to aiohttp
    date: _Date = field(default_factory=_Date)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Client connections open now, in either front."""
        server = self.runner.server
        return len(self.lanes) + (len(server.connections) if server is not None else 0)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Drain: stop accepting; let answers in progress on either front finish (up to
        ``grace_s``, streams included); close the rest."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for lane in list(self.lanes):
            if not lane.busy:
                lane._close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s

        async def lanes_done() -> None:
            while any(lane.busy for lane in self.lanes) and loop.time() < deadline:
                await asyncio.sleep(0.05)

        server = self.runner.server
        # aiohttp's shutdown closes its idle connections at once and waits for those with a
        # request in progress, up to the same grace
        waits = [lanes_done()] + ([server.shutdown(grace_s)] if server is not None else [])
        await asyncio.gather(*waits)
        for lane in list(self.lanes):
            lane._close()
        await self.runner.cleanup()


async def listen(
    app: web.Application, host: str, port: int, *, fast_lane: bool = True, backlog: int = 2048
) -> Listening:
    """Serve ``app`` on ``host:port``: through the fast lane, or (``fast_lane=False``) aiohttp
    alone.  ``Listening.stop`` undoes it."""
    cfg = app[CONFIG].gateway
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    server = runner.server
    assert server is not None
    limit = cfg.max_body_bytes
    guarded = protocol_factory(server, cfg)
    listening = Listening(
        app,
        runner,
        guarded,
        limit,
        limit + _MAX_HEAD,
        streams=cfg.fast_lane_streams,
        header_timeout_s=cfg.header_timeout_s,
        body_timeout_s=cfg.body_timeout_s,
        keepalive_s=cfg.keepalive_timeout_s,
    )
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.Protocol] = (
        (lambda: FastLane(listening)) if fast_lane else guarded
    )
    listening.server = await loop.create_server(factory, host, port, backlog=backlog)
    return listening
