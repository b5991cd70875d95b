"""aiohttp's half of the front door, held to the same rules as the fast lane.

aiohttp serves everything the fast lane hands over (streams, other paths, edge cases), and out
of the box it differs from the fast lane in three ways a client can abuse or trip over:

- a request head may take as long as the client likes (one byte every few seconds keeps a
  connection open for ever: slowloris); here a head must be whole within
  ``header_timeout_s`` of its first byte, as in the fast lane;
- a request it cannot parse is answered in plain text, on an ``HTTP/1.0`` status line that
  echoes the offending bytes, with a traceback in the log; here it is OpenAI's error JSON on
  ``HTTP/1.1``, one log line and no traceback (a malformed request is the client's error);
- its idle keep-alive default is an hour; here it is ``keepalive_timeout_s``.

This subclasses aiohttp's ``RequestHandler``, the one place those behaviours live; the hooks
used (``handle_error``, ``_handle_request``) are aiohttp's own override points for its server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.web_protocol import RequestHandler

from fleetpilot.config import GatewayConfig
from fleetpilot.errors import ApiError, BadRequest, PayloadTooLarge
from fleetpilot.gateway.intake import new_request_id
from fleetpilot.gateway.pipeline import Answer, Whole, error_reply

__all__ = ["GuardedHandler", "expect_continue", "protocol_factory", "write"]

log = logging.getLogger("fleetpilot.gateway")


class GuardedHandler(RequestHandler):
    """One aiohttp connection with a deadline on every request head."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kw: Any) -> None:
        super().__init__(manager, **kw)
        self._head_timeout = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._bytes_in_request = False

    def data_received(self, data: bytes) -> None:
        if self._in_request:
            self._bytes_in_request = True
        elif self._head_timer is None:
            self._arm_head()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head()
        super().connection_lost(exc)

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        self._disarm_head()  # the head is whole; the body has its own timeout
        self._in_request, self._bytes_in_request = True, False
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._in_request = False
            if self._bytes_in_request:  # the next request began meanwhile: its head is timed
                self._arm_head()

    def _arm_head(self) -> None:
        self._disarm_head()
        self._head_timer = asyncio.get_running_loop().call_later(
            self._head_timeout, self._head_expired
        )

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self._in_request:
            log.info("closing a connection whose request head did not come in time")
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp itself could not take: OpenAI's error JSON, one log line."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun; no error answer can follow")
        rid = new_request_id()
        err: ApiError
        if status >= 500:
            err = ApiError("internal gateway error")
            log.error("%s unhandled error in aiohttp's protocol", rid, exc_info=exc)
        else:
            try:
                what = HTTPStatus(status).phrase.lower()
            except ValueError:
                what = str(status)
            err = (
                PayloadTooLarge(f"request head too large ({what})")
                if status in (413, 431)
                else BadRequest(f"malformed HTTP request ({what})")
            )
            err.status = status
        err.detail = type(exc).__name__ if exc is not None else None
        # The head could not be read, so aiohttp fell back to HTTP/1.0; answer as HTTP/1.1.
        request._version = HttpVersion11
        resp = response(error_reply(err, rid))
        resp.force_close()
        return resp


def response(reply: Whole) -> web.Response:
    return web.Response(
        body=reply.body, status=reply.status, content_type=reply.content_type, headers=reply.headers
    )


async def write(answer: Answer, request: web.Request) -> web.StreamResponse:
    """Send ``answer``: a whole reply at once, a stream event by event.  A client that goes
    away mid-stream closes the stream's iterator, which stops the replica (the upstream
    stage's ``finally``)."""
    if isinstance(answer, Whole):
        return response(answer)
    events = answer.events
    out = web.StreamResponse(status=answer.status, headers=answer.headers)
    try:
        await out.prepare(request)
        async for payload in events:
            await out.write(b"data: " + payload + b"\n\n")
        await out.write_eof()
    except ConnectionError:
        pass  # the client left; the finally below closes the events
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return out


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` is answered with ``100 Continue``; any other expectation with
    a 417 in OpenAI's shape (aiohttp's own answers in plain text, echoing the value, and fails
    with a 500 on a byte outside ASCII).  Runs before any middleware, for every route."""
    expect = request.headers.get("Expect", "")
    if expect.strip().lower() == "100-continue":
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the real answer has not begun
        return None
    err = ApiError("the only expectation the gateway meets is '100-continue'")
    err.status, err.type, err.param = 417, "invalid_request_error", "Expect"
    return response(error_reply(err, new_request_id()))


def protocol_factory(server: web.Server, config: GatewayConfig) -> Callable[[], GuardedHandler]:
    """New aiohttp connections for ``server`` (an ``AppRunner``'s), under ``config``'s limits."""
    loop = asyncio.get_running_loop()

    def make() -> GuardedHandler:
        return GuardedHandler(
            server,
            loop=loop,
            header_timeout_s=config.header_timeout_s,
            keepalive_timeout=config.keepalive_timeout_s,
            access_log=None,
        )

    return make
