"""Benchmark servers: an OpenAI-compatible upstream whose completions take exactly ``delay`` s,
and a byte relay that adds one proxy hop and nothing else.

It is a raw ``asyncio.Protocol`` with a minimal HTTP/1.1 parser rather than a web framework,
so that one core answers several thousand requests a second and the server is never what a
benchmark measures.  It runs on the standard asyncio loop, not uvloop, on purpose: libuv keeps
time in whole milliseconds of the loop's cached clock, so a 50 ms timer there fires on the
next millisecond boundary after ``arrival + 50 ms``, and a proxy's extra 0.3 ms would show up
as 0 or 1 ms depending on the phase.  asyncio's timers are relative to ``time.monotonic()``
and fire within a fraction of a millisecond of ``arrival + delay``.  It answers:

- ``POST /v1/chat/completions``: after ``delay`` seconds (``loop.call_later``, the same timer
  ``asyncio.sleep`` uses), a small fixed ``chat.completion`` with ``usage``; or, with
  ``"stream": true``, the first SSE chunk after ``delay`` and then a few more chunks and
  ``data: [DONE]`` at once (chunked transfer encoding); with ``--pace S``, as replicas send
  streams: ``--tokens`` events, one every ``S`` seconds, each its own write.
- ``GET /health`` and ``GET /v1/models`` at once.

Requests may arrive with ``Content-Length`` or chunked bodies; connections are kept alive.

The relay (``--relay-to PORT``) copies bytes both ways between each client connection and a
connection of its own to ``PORT``, parsing nothing.  On the proxy's core it measures what any
extra process on the path costs on this machine (two loopback hops, a process woken from
idle twice per request), the floor under a proxy's added latency.

    python bench/upstream_fixed.py --port 9000 --delay 0.05 [--cpu 1]
    python bench/upstream_fixed.py --port 9100 --relay-to 9000 [--cpu 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from collections.abc import Callable

__all__ = ["MODEL", "dechunk", "serve"]

MODEL = "llama-3.1-8b"
_WORDS = ["Hello", " from", " the", " fixed", " upstream", "."]

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(_WORDS)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    },
    separators=(",", ":"),
).encode()

_MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
).encode()


def _sse_chunk(delta: dict[str, str], finish: str | None, usage: bool = False) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-fixed",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


_SSE_EVENTS = (
    [_sse_chunk({"role": "assistant", "content": _WORDS[0]}, None)]
    + [_sse_chunk({"content": w}, None) for w in _WORDS[1:]]
    + [_sse_chunk({}, "stop", usage=True), b"data: [DONE]\n\n"]
)
# Each event is one HTTP chunk; the terminating zero-length chunk follows the last one.
_SSE_FRAMES = [b"%x\r\n%s\r\n" % (len(e), e) for e in _SSE_EVENTS]
_SSE_FRAMES[-1] += b"0\r\n\r\n"


def _head(status: bytes, ctype: bytes, length: int | None) -> bytes:
    if length is None:
        framing = b"Transfer-Encoding: chunked\r\nCache-Control: no-cache"
    else:
        framing = b"Content-Length: %d" % length
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\n%s\r\nConnection: keep-alive\r\n\r\n" % (
        status,
        ctype,
        framing,
    )


_JSON = b"application/json"
_OK_COMPLETION = _head(b"200 OK", _JSON, len(_COMPLETION)) + _COMPLETION
_OK_STREAM_HEAD = _head(b"200 OK", b"text/event-stream", None)
_OK_MODELS = _head(b"200 OK", _JSON, len(_MODELS)) + _MODELS
_OK_HEALTH = _head(b"200 OK", _JSON, 2) + b"{}"
_NOT_FOUND = _head(b"404 Not Found", _JSON, 2) + b"{}"
_BAD = _head(b"400 Bad Request", _JSON, 2) + b"{}"


def _paced_frames(tokens: int) -> list[bytes]:
    """A stream as replicas send it: one SSE event (one HTTP chunk) per token."""
    events = [_sse_chunk({"role": "assistant", "content": ""}, None)]
    events += [_sse_chunk({"content": f" w{i}"}, None) for i in range(tokens)]
    events += [_sse_chunk({}, "stop", usage=True), b"data: [DONE]\n\n"]
    frames = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    frames[-1] += b"0\r\n\r\n"
    return frames


class _Http(asyncio.Protocol):
    """One keep-alive connection: parse requests as they arrive, answer on a timer."""

    def __init__(self, delay: float, pace: float = 0.0, tokens: int = 0) -> None:
        self.pace = pace
        self.paced = _paced_frames(tokens) if pace > 0 else []
        self.delay = delay
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            parsed = _parse_request(self.buf)
            if parsed is None:
                return
            method, path, body, consumed = parsed
            self.buf = self.buf[consumed:]
            self._dispatch(method, path, body)

    def _dispatch(self, method: bytes, path: bytes, body: bytes) -> None:
        if method == b"POST" and path == b"/v1/chat/completions":
            try:
                stream = bool(json.loads(body).get("stream"))
            except (ValueError, AttributeError):
                self._write(_BAD)
                return
            if stream:
                self.loop.call_later(self.delay, self._stream)
            else:
                self.loop.call_later(self.delay, self._write, _OK_COMPLETION)
        elif method == b"GET" and path == b"/health":
            self._write(_OK_HEALTH)
        elif method == b"GET" and path == b"/v1/models":
            self._write(_OK_MODELS)
        else:
            self._write(_NOT_FOUND)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _stream(self) -> None:
        if self.paced:  # one event every ``pace`` seconds, each its own write
            self._write(_OK_STREAM_HEAD + self.paced[0])
            self.loop.call_later(self.pace, self._next_paced, 1)
            return
        # Head and first event together, then each event as its own write (and segment).
        self._write(_OK_STREAM_HEAD + _SSE_FRAMES[0])
        for frame in _SSE_FRAMES[1:]:
            self._write(frame)

    def _next_paced(self, i: int) -> None:
        if self.transport is None:
            return
        self._write(self.paced[i])
        if i + 1 < len(self.paced):
            self.loop.call_later(self.pace, self._next_paced, i + 1)


def _parse_request(buf: bytes) -> tuple[bytes, bytes, bytes, int] | None:
    """(method, path, body, bytes consumed) for the first complete request, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    start = end + 4
    path = path.split(b"?", 1)[0]
    if chunked:
        got = dechunk(buf, start)
        return None if got is None else (method, path, got[0], got[1])
    if len(buf) < start + length:
        return None
    return method, path, buf[start : start + length], start + length


def dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """(body, end offset) of the chunked body that starts at ``buf[pos]``, or None if partial."""
    body: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        if size == 0:  # last chunk: an empty line, or trailers and then an empty line
            if len(buf) < eol + 4:
                return None
            done = eol if buf[eol + 2 : eol + 4] == b"\r\n" else buf.find(b"\r\n\r\n", eol + 2)
            return None if done < 0 else (b"".join(body), done + 4)
        if len(buf) < eol + 2 + size + 2:
            return None
        body.append(buf[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2


class _Pipe(asyncio.Protocol):
    """One side of the relay: what arrives here is written to ``peer``.

    The client's side is made with ``target`` and opens its own connection to it; until that
    is up, what the client sends waits in ``pending``.
    """

    def __init__(
        self, peer: asyncio.Transport | None = None, target: tuple[str, int] | None = None
    ) -> None:
        self.peer = peer
        self.target = target
        self.pending: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.target is not None:
            self.opening = asyncio.ensure_future(self._open(*self.target))

    async def _open(self, host: str, port: int) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            out, _ = await loop.create_connection(lambda: _Pipe(self.transport), host, port)
        except OSError:
            self.transport.close()
            return
        self.peer = out
        out.write(b"".join(self.pending))

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


async def serve(
    host: str,
    port: int,
    delay: float,
    relay_to: int | None = None,
    pace: float = 0.0,
    tokens: int = 0,
) -> None:
    """Serve until SIGTERM or SIGINT: the upstream, or with ``relay_to`` the relay."""
    loop = asyncio.get_running_loop()
    if relay_to is None:
        factory: Callable[[], asyncio.Protocol] = lambda: _Http(delay, pace, tokens)  # noqa: E731
        what = f"upstream, delay {delay}s"
    else:
        factory = lambda: _Pipe(target=(host, relay_to))  # noqa: E731
        what = f"relay to port {relay_to}"
    server = await loop.create_server(factory, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on http://{host}:{port}: {what}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--delay", type=float, default=0.05, help="seconds before the answer")
    ap.add_argument("--relay-to", type=int, default=None, help="be a byte relay to this port")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core")
    ap.add_argument("--pace", type=float, default=0.0, help="streams: seconds between tokens")
    ap.add_argument("--tokens", type=int, default=200, help="streams: tokens, with --pace")
    ap.add_argument(
        "--uvloop", action="store_true", help="run on uvloop, as the gateway does (relay floors)"
    )
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, args.delay, args.relay_to, args.pace, args.tokens))


if __name__ == "__main__":
    main()
