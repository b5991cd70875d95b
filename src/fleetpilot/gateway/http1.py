"""A minimal keep-alive HTTP/1.1 client: the transport under :class:`~.upstream.Upstream`.

Why not aiohttp's client: at concurrency 1 the gateway's added latency is its CPU per request
on a core that went cold while the replica worked, and aiohttp's client (request and response
objects, URL parsing, tracing hooks, cookie jar, timer contexts) was about 0.6 ms of it.  What
the gateway asks of a replica is narrow — send bytes, read a status, a content type and a body
whole or line by line — so one :class:`asyncio.Protocol` per connection does it.

Parsing is llhttp's (Node's HTTP parser) through ``httptools``, fed as bytes arrive; the
protocol around it — the keep-alive pool, the per-origin cap, timeouts as silences, flow
control, 1xx skipping, close-delimited bodies ending on EOF — is ours.

Scope: responses with ``Content-Length``, chunked, or close-delimited bodies; 1xx interim
responses are skipped; a keep-alive pool per origin with a cap on connections per origin
(callers over the cap wait their turn); idle connections closed on a timer once they have
been idle ``keepalive_s`` (a burst must not leave its sockets open for ever); TLS with the
default context.  No redirects, no compression (no ``Accept-Encoding`` is sent), no proxies,
no cookies.

Timeouts are *silences*, as aiohttp's ``sock_read``: a read fails with :class:`TimeoutError`
when nothing arrived for ``read_timeout`` seconds, however long the whole answer takes.
Connection failures are :class:`ConnectionError` (or another :class:`OSError`), a response
that is not HTTP is :class:`BadResponse`; callers map them to fleetpilot's errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

__all__ = ["BadResponse", "Http1Client", "Http1Response", "ServerDisconnected", "no_delay"]

log = logging.getLogger("fleetpilot.gateway")

_MAX_HEAD = 64 * 1024
_MAX_LINE = 4 * 1024 * 1024  # one SSE line; far above any token chunk
_HIGH_WATER = 256 * 1024  # a streamed body buffered past this pauses the socket
_LOW_WATER = 64 * 1024

# response states: no request out; waiting for the head; a body framed by Content-Length or
# chunks; a body that ends when the connection does; the response is complete
_IDLE, _HEAD, _BODY, _CLOSE, _DONE = range(5)


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Send small writes at once (no Nagle): every answer here is one write, wanted now."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ServerDisconnected(ConnectionError):
    """The replica closed the connection before the response was complete."""


class BadResponse(OSError):
    """What came back is not an HTTP/1.x response this client can read."""


class _Conn(asyncio.Protocol):
    """One connection and the response being read on it; llhttp parses as bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int]) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.parser: httptools.HttpResponseParser | None = None  # one per response
        self.body = bytearray()  # parsed body bytes, not yet consumed
        self.state = _IDLE
        self.head_size = 0  # bytes of status and header fields seen for this response
        self.framed = False  # the head gave a Content-Length or chunked encoding
        self.connection = b""  # the Connection header, lowercased
        self.status = 0
        self.content_type = ""
        self.keep_alive = True
        self.head_only = False
        self.received = False  # any byte of the current response
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.whole = False  # the reader wants the whole body: never pause
        self.idle_since = 0.0
        self.active_at = 0.0  # the last byte, or the start of the wait: silence counts from it
        self.silence = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.listener: Callable[[bytes], bool] | None = None  # see Http1Response.divert
        self.held = False  # a data line was declined: the reader takes the body from there

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self.state == _CLOSE:
            self.state = _DONE  # a body with neither length nor chunks ends with the connection
        elif self.state not in (_IDLE, _DONE) and self.error is None:
            self.error = ServerDisconnected(
                f"connection closed before the response was complete ({exc!r})"
                if exc
                else "connection closed before the response was complete"
            )
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.active_at = self.loop.time()
        parser = self.parser
        if self.state in (_IDLE, _DONE) or parser is None:
            self.keep_alive = False  # bytes nobody asked for: do not reuse this connection
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.state != _DONE:
                self.error = BadResponse("malformed HTTP response: an unasked-for protocol upgrade")
                self._abort()
        except httptools.HttpParserError as exc:
            if self.state == _DONE:
                self.keep_alive = False  # garbage after a complete answer: drop the connection
            else:
                cause = exc.__context__
                self.error = (
                    cause
                    if isinstance(cause, BadResponse)
                    else BadResponse(f"malformed HTTP response: {exc}")
                )
                self._abort()
        if self.listener is not None and not self.held and self.error is None:
            self._divert()
            if self.state != _DONE and not self.held and self.body.find(b"\n") < 0:
                return  # every event went to the listener: the reader sleeps on
        if not self.paused and not self.whole and len(self.body) > _HIGH_WATER:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def _divert(self) -> None:
        """Offer each whole ``data:`` line to the listener, in order, until it declines one;
        other lines (blank, comments, ``event:``) are dropped, as the reader drops them."""
        body, listener = self.body, self.listener
        assert listener is not None
        start = 0
        while True:
            eol = body.find(b"\n", start)
            if eol < 0:
                break
            if body.startswith(b"data:", start):
                payload = bytes(body[start + 5 : eol]).strip()
                try:
                    taken = listener(payload)
                except Exception:  # a bug in a listener must not cost the stream
                    log.exception("a stream listener failed; the rest goes the slow way")
                    self.listener = None
                    taken = False
                if not taken:
                    self.held = True
                    break
            start = eol + 1
        if start:
            del body[:start]

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost finishes the body or fails it

    # -- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.state == _DONE:
            self.keep_alive = False  # a second answer to one request: do not reuse
            return
        self.head_size = 0
        self.framed = False
        self.connection = b""
        self.content_type = ""

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if self.state != _HEAD:
            return  # trailer fields
        name = name.lower()
        if name == b"content-type":
            self.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
        elif name == b"content-length":
            self.framed = True
        elif name == b"transfer-encoding":
            self.framed = self.framed or b"chunked" in value.lower()
        elif name == b"connection":
            self.connection = value.strip().lower()

    def _count_head(self, n: int) -> None:
        if self.state != _HEAD:
            return
        self.head_size += n
        if self.head_size > _MAX_HEAD:
            raise BadResponse("malformed HTTP response: response head over 64 KiB")

    def on_headers_complete(self) -> None:
        if self.state != _HEAD:
            return
        assert self.parser is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim response; llhttp completes it and reads the real one next
        self.status = status
        if self.head_only or status in (204, 304):
            # llhttp does not know the request was HEAD; the response ends with its head
            if self.parser.get_http_version() == "1.1":
                self.keep_alive = self.connection != b"close"
            else:
                self.keep_alive = self.connection == b"keep-alive"
            self.state = _DONE
            return
        self.keep_alive = self.parser.should_keep_alive()
        if self.framed:
            self.state = _BODY
        else:
            self.state = _CLOSE  # read until EOF
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self.state in (_BODY, _CLOSE):
            self.body += body
        else:
            self.keep_alive = False  # body bytes after a HEAD answer: do not reuse

    def on_message_complete(self) -> None:
        if self.state in (_BODY, _CLOSE):
            self.state = _DONE
        # _HEAD: a 1xx interim response ended; the real one follows on the same parser

    # -- waiting ----------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        left = self.active_at + self.silence - self.loop.time()
        if left > 0.001:  # bytes came meanwhile (to a listener): the silence starts again
            self.timer = self.loop.call_later(left, self._expire)
            return
        waiter.set_exception(TimeoutError("no bytes from the server in time"))

    async def wait(self, timeout: float) -> None:
        """Until something happens on this connection, at most ``timeout`` s of silence."""
        if self.error is not None:
            raise self.error
        self.waiter = waiter = self.loop.create_future()
        self.silence, self.active_at = timeout, self.loop.time()
        self.timer = self.loop.call_later(timeout, self._expire)
        try:
            await waiter
        finally:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.waiter = None
        if self.error is not None:
            raise self.error

    def _abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    def start(self, raw: bytes, head_only: bool) -> None:
        """Send one request; the connection must be idle."""
        self.parser = httptools.HttpResponseParser(self)
        self.body.clear()
        self.state = _HEAD
        self.status, self.content_type = 0, ""
        self.head_only = head_only
        self.received = self.whole = self.held = False
        self.listener = None
        self.error = None
        assert self.transport is not None
        self.transport.write(raw)

    def consumed(self, *, need_more: bool = False) -> None:
        """The reader took bytes; with ``need_more`` it cannot go on without more."""
        low = need_more or len(self.body) < _LOW_WATER
        if self.paused and low and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


class Http1Response:
    """Status and content type are in; the body is read with :meth:`read` or :meth:`readline`.

    Reading to the end hands the connection back for reuse; :meth:`close` drops it.  A body
    that is not read to the end must be closed (``release`` does it when needed).
    """

    __slots__ = ("_client", "_conn", "_timeout", "content_type", "status")

    def __init__(self, client: Http1Client, conn: _Conn, timeout: float) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self._timeout = timeout
        self.status = conn.status
        self.content_type = conn.content_type

    @property
    def closed(self) -> bool:
        return self._conn is None

    def read_timeout(self, seconds: float) -> None:
        """The silence allowed from now on (a stream's, once its head is in)."""
        self._timeout = seconds

    async def read(self) -> bytes:
        """The whole body (what is left of it)."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            conn.whole = True
            conn.consumed()
            while conn.state != _DONE:
                await conn.wait(self._timeout)
            data = bytes(conn.body)
            conn.body.clear()
        except BaseException:
            self.close()
            raise
        self.release()
        return data

    async def readline(self) -> bytes:
        """The next line with its ``\\n``, the unterminated rest at the end, then ``b""``."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            body = conn.body
            start = 0
            while True:
                eol = body.find(b"\n", start)
                if eol >= 0:
                    line = bytes(body[: eol + 1])
                    del body[: eol + 1]
                    conn.consumed()
                    return line
                if conn.state == _DONE:
                    line = bytes(body)
                    body.clear()
                    self.release()
                    return line
                if len(body) > _MAX_LINE:
                    raise BadResponse("a line of the response body is over 4 MiB")
                start = len(body)
                conn.held = False  # every line held back is read: the listener may go on
                conn.consumed(need_more=True)
                await conn.wait(self._timeout)
                if conn.listener is not None:
                    start = 0  # the listener may have taken the start of the body meanwhile
        except BaseException:
            self.close()
            raise

    def divert(self, listener: Callable[[bytes], bool] | None) -> None:
        """Hand each ``data:`` payload of an event stream to ``listener`` as it arrives, in
        the connection's own callback: no task wakes for an event the listener takes (returns
        True).  The first one it declines, and every line after it, is read with
        :meth:`readline` as before, until the reader has caught up; the end of the body,
        an error and a stall still wake the reader.  ``None`` stops diverting."""
        if self._conn is not None:
            self._conn.listener = listener

    def release(self) -> None:
        """Give the connection back: to the pool if the body was read to its end."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.listener = None
            self._client._release(conn, reuse=conn.state == _DONE and conn.keep_alive)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.listener = None
            self._client._release(conn, reuse=False)


class _Origin:
    """Idle connections to one origin and the count of those lent out."""

    __slots__ = ("active", "idle", "waiters")

    def __init__(self) -> None:
        self.idle: list[_Conn] = []
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class Http1Client:
    """A pool of keep-alive connections, at most ``limit_per_host`` lent out per origin."""

    def __init__(
        self,
        *,
        connect_timeout: float = 2.0,
        limit_per_host: int = 512,
        keepalive_s: float = 30.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.limit_per_host = limit_per_host
        self.keepalive_s = keepalive_s
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._urls: dict[str, tuple[tuple[str, str, int], bytes, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def in_use(self) -> int:
        """Connections lent out and not yet given back (0 when nothing leaks)."""
        return sum(o.active for o in self._origins.values())

    @property
    def idle(self) -> int:
        """Connections kept open for reuse."""
        return sum(len(o.idle) for o in self._origins.values())

    def _split(self, url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
        """(origin, request target, Host value), cached: the gateway sends to few URLs."""
        hit = self._urls.get(url)
        if hit is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.netloc.rsplit("@", 1)[-1]
            hit = ((parts.scheme, parts.hostname, port), target.encode(), host.encode("idna"))
            if len(self._urls) > 4096:  # replicas come and go; keep the cache bounded
                self._urls.clear()
            self._urls[url] = hit
        return hit

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        read_timeout: float,
    ) -> Http1Response:
        """Send a request; returns once the status line and headers are in."""
        origin, target, host = self._split(url)
        head = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target, host)]
        if headers:
            head.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
        if body or method == "POST":
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        raw = b"".join(head) + body
        pool = self._origins.get(origin)
        if pool is None:
            pool = self._origins[origin] = _Origin()
        while pool.active >= self.limit_per_host:
            waiter = asyncio.get_running_loop().create_future()
            pool.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one(pool)  # pass the slot on
                raise
        pool.active += 1
        try:
            conn = self._idle_conn(pool)
            if conn is not None:
                try:
                    await self._exchange(conn, raw, method == "HEAD", read_timeout)
                    return Http1Response(self, conn, read_timeout)
                except BaseException as exc:
                    # A kept-alive connection the server closed as we reused it: try once more
                    # on a new one, unless the server had begun to answer.
                    conn._abort()
                    if conn.received or not isinstance(exc, ConnectionError):
                        raise
            conn = await self._connect(origin)
            try:
                await self._exchange(conn, raw, method == "HEAD", read_timeout)
            except BaseException:
                conn._abort()
                raise
            return Http1Response(self, conn, read_timeout)
        except BaseException:
            self._lent_back(pool)
            raise

    def _idle_conn(self, pool: _Origin) -> _Conn | None:
        idle = pool.idle
        while idle:
            conn = idle.pop()
            fresh = conn.loop.time() - conn.idle_since < self.keepalive_s
            if fresh and conn.keep_alive and not conn.closed:
                return conn
            conn._abort()
        return None

    async def _connect(self, origin: tuple[str, str, int]) -> _Conn:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(lambda: _Conn(loop, origin), host, port, ssl=tls)
        return conn

    @staticmethod
    async def _exchange(conn: _Conn, raw: bytes, head_only: bool, timeout: float) -> None:
        conn.start(raw, head_only)
        while conn.state in (_HEAD, _IDLE):
            await conn.wait(timeout)

    def _release(self, conn: _Conn, *, reuse: bool) -> None:
        pool = self._origins.get(conn.origin)
        if reuse and not conn.closed and not self._closed and pool is not None:
            conn.state = _IDLE
            conn.idle_since = conn.loop.time()
            pool.idle.append(conn)
            if self._sweeper is None:
                self._sweeper = conn.loop.call_later(self.keepalive_s, self._sweep)
        else:
            conn._abort()
        if pool is not None:
            self._lent_back(pool)

    def _lent_back(self, pool: _Origin) -> None:
        pool.active -= 1
        self._wake_one(pool)

    @staticmethod
    def _wake_one(pool: _Origin) -> None:
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle for ``keepalive_s``; come back when the next one will be."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = None
        for pool in self._origins.values():
            keep = []
            for conn in pool.idle:
                if conn.closed or loop.time() - conn.idle_since >= self.keepalive_s:
                    conn._abort()
                else:
                    keep.append(conn)
                    oldest = conn.idle_since if oldest is None else min(oldest, conn.idle_since)
            pool.idle[:] = keep
        if oldest is not None and not self._closed:
            self._sweeper = loop.call_at(oldest + self.keepalive_s, self._sweep)

    async def close(self) -> None:
        """Close idle connections; those lent out close when their responses are done."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._origins.values():
            for conn in pool.idle:
                conn._abort()
            pool.idle.clear()
