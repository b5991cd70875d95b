"""An OpenAI-compatible replica that executes the perf model in real time (aiohttp).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streamed or not),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (vLLM's
metric names) and ``GET|POST /admin/fault`` (see :mod:`fleetpilot.emulator.faults`).

``/health`` answers 200 ``{"status": "ok"}`` normally and 503 ``{"status": "unhealthy"}``
while the fault is ``refuse``, ``error500`` or ``hang``: the probe itself always answers
promptly, so a prober learns the state instead of hanging with the requests.

Every response carries ``x-emulator-replica: host:port``.  Tokens are timed by
:class:`~fleetpilot.emulator.engine.EmulatedReplica`; response headers go out with the first
token, so a replica that fails before it has a token fails before the first byte.

When the replica "dies" (fault ``die_after``), :func:`run_emulator` exits the process at once
(``os._exit``, status :data:`DIE_EXIT_CODE`), as a crashed or pre-empted server would.  An
emulator started in-process with :func:`start_emulator` instead aborts every connection and
stops listening, which a client cannot tell apart, and leaves the host process alive.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from fleetpilot.catalogue import load_catalogue
from fleetpilot.clock import Clock, SystemClock
from fleetpilot.core.model import Profile
from fleetpilot.emulator.engine import EmulatedReplica, Generation, ReplicaStopped
from fleetpilot.emulator.faults import Fault, FaultSetting
from fleetpilot.emulator.metrics import CONTENT_TYPE, ReplicaMetrics
from fleetpilot.emulator.protocol import (
    CompletionRequest,
    Kind,
    Reply,
    embeddings_response,
    parse_completion,
)
from fleetpilot.errors import ApiError, BadRequest, ConfigError

__all__ = [
    "DIE_EXIT_CODE",
    "EmulatorOptions",
    "ReplicaServer",
    "RunningEmulator",
    "run_emulator",
    "start_emulator",
]

DIE_EXIT_CODE = 3
REPLICA_HEADER = "x-emulator-replica"
_SHUTDOWN_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class EmulatorOptions:
    """How to run one emulated replica; checked on construction (raises ``ConfigError``)."""

    model: str = "llama-3.1-8b"
    accelerator: str = "A10G"
    host: str = "127.0.0.1"
    port: int = 9001  # 0 picks a free port
    time_scale: float = 1.0
    catalogue: Path | str | None = None
    fault: str = "none"
    die_after_tokens: int = 0
    slowdown: float = 1.0

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ConfigError(f"time_scale must be > 0, got {self.time_scale}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        self.fault_setting()

    def fault_setting(self) -> FaultSetting:
        try:
            return FaultSetting.parse(self.fault, self.die_after_tokens, self.slowdown)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj).encode() + b"\n\n"


def _error(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers(), dumps=_dumps)


async def _flush(transport: asyncio.BaseTransport | None, limit_s: float = 1.0) -> None:
    """Wait until what was written to ``transport`` has left the process."""
    if not isinstance(transport, asyncio.WriteTransport):
        return
    waited = 0.0
    while not transport.is_closing() and transport.get_write_buffer_size() and waited < limit_s:
        await asyncio.sleep(0.001)
        waited += 0.001


class ReplicaServer:
    """The HTTP face of one :class:`EmulatedReplica`: handlers, faults and metrics."""

    def __init__(
        self,
        options: EmulatorOptions,
        profile: Profile,
        die: Callable[[], Awaitable[None]],
        clock: Clock | None = None,
    ) -> None:
        self.model = options.model
        self.clock: Clock = clock or SystemClock()
        self.replica = EmulatedReplica(profile, time_scale=options.time_scale, clock=self.clock)
        self.metrics = ReplicaMetrics(self.replica, options.model)
        self.name = f"{options.host}:{options.port}"
        self.die = die
        self.dead = False
        self.fault = FaultSetting()
        self.set_fault(options.fault_setting())
        self._created = int(time.time())
        self._tokens_since_fault = 0
        self._transports: set[asyncio.Transport] = set()
        self._closing = asyncio.Event()

    # -- wiring ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        @web.middleware
        async def middleware(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            return await self._around(request, handler)

        app = web.Application(middlewares=[middleware])
        app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat),
                web.post("/v1/completions", self._text),
                web.post("/v1/embeddings", self._embeddings),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
                web.get("/metrics", self._metrics),
                web.get("/admin/fault", self._get_fault),
                web.post("/admin/fault", self._post_fault),
            ]
        )
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_response_prepare.append(self._stamp)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.replica.start()

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._closing.set()
        self.abort_connections()
        await self.replica.close()

    async def _stamp(self, _request: web.BaseRequest, response: web.StreamResponse) -> None:
        response.headers[REPLICA_HEADER] = self.name

    def abort_connections(self) -> None:
        """Reset every connection that has a request in progress."""
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    def set_fault(self, setting: FaultSetting) -> None:
        """Switch the fault; ``die_after`` counts tokens from now on."""
        self.fault = setting
        self.replica.slowdown = setting.slowdown
        self._tokens_since_fault = 0

    async def _around(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        transport = request.transport
        if isinstance(transport, asyncio.Transport):
            self._transports.add(transport)
        try:
            if request.path.startswith("/v1/"):
                refused = await self._fault_gate(request)
                if refused is not None:
                    return refused
            return await handler(request)
        except ApiError as exc:
            return _error(exc)
        finally:
            if isinstance(transport, asyncio.Transport):
                self._transports.discard(transport)

    async def _fault_gate(self, request: web.Request) -> web.StreamResponse | None:
        """Act out the current fault before a request is served; None lets it through."""
        fault = self.fault.fault
        if fault is Fault.HANG and not self.dead:
            await self._closing.wait()
        if self.dead or fault in (Fault.REFUSE, Fault.HANG):
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client: the socket is gone
        if fault is Fault.ERROR500:
            raise ApiError(f"emulated replica failure (fault {fault.value})")
        return None

    # -- inference ---------------------------------------------------------------------------

    @staticmethod
    async def _json(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat")

    async def _text(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "text")

    async def _complete(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        req = parse_completion(await self._json(request), kind=kind, served_model=self.model)
        reply = Reply.new(req, int(time.time()))
        started = self.clock.now()
        gen = self.replica.submit(req.prompt_tokens, req.max_tokens)
        try:
            if req.stream:
                return await self._stream(request, reply, gen, started)
            return await self._whole(request, reply, gen, started)
        except ReplicaStopped:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        finally:
            self.replica.cancel(gen)

    async def _stream(
        self, request: web.Request, reply: Reply, gen: Generation, started: float
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            async for i in gen:
                if i == 0:
                    await resp.prepare(request)
                    self._first_token(reply.req, started)
                await resp.write(_sse(reply.token_chunk(i)))
                await self._token_sent(request)
            await resp.write(_sse(reply.finish_chunk()))
            if reply.req.include_usage:
                await resp.write(_sse(reply.usage_chunk(gen.delivered)))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            return resp  # the client left; the engine drops its sequence in _complete
        self._finished(started)
        return resp

    async def _whole(
        self, request: web.Request, reply: Reply, gen: Generation, started: float
    ) -> web.StreamResponse:
        async for i in gen:
            if i == 0:
                self._first_token(reply.req, started)
            await self._token_sent(request)
        self._finished(started)
        return web.json_response(reply.whole(gen.delivered), dumps=_dumps)

    def _first_token(self, req: CompletionRequest, started: float) -> None:
        self.metrics.prompt_tokens.inc(req.prompt_tokens)
        self.metrics.ttft.observe(self.clock.now() - started)

    def _finished(self, started: float) -> None:
        self.metrics.e2e.observe(self.clock.now() - started)
        self.metrics.finished("length")

    async def _token_sent(self, request: web.Request) -> None:
        self.metrics.generation_tokens.inc()
        self._tokens_since_fault += 1
        if not self.dead and self._tokens_since_fault >= self.fault.die_after_tokens > 0:
            await _flush(request.transport)
            self.dead = True
            await self.die()

    # -- the rest ----------------------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        out = embeddings_response(await self._json(request), served_model=self.model)
        return web.json_response(out, dumps=_dumps)

    async def _models(self, _request: web.Request) -> web.StreamResponse:
        model = {
            "id": self.model,
            "object": "model",
            "created": self._created,
            "owned_by": "fleetpilot-emulator",
            "root": self.model,
        }
        return web.json_response({"object": "list", "data": [model]}, dumps=_dumps)

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        ok = self.fault.healthy and not self.dead
        body = {"status": "ok" if ok else "unhealthy", "model": self.model, **self.fault.as_json()}
        return web.json_response(body, status=200 if ok else 503, dumps=_dumps)

    async def _metrics(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _get_fault(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response(self.fault.as_json(), dumps=_dumps)

    async def _post_fault(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        try:
            setting = FaultSetting.parse(
                body.get("fault", "none"),
                body.get("die_after_tokens", 0),
                body.get("slowdown", 1.0),
            )
        except ValueError as exc:
            raise BadRequest(str(exc), param="fault") from None
        self.set_fault(setting)
        return web.json_response(setting.as_json(), dumps=_dumps)


# ---------------------------------------------------------------------------------------------
# Running it


@dataclass(eq=False)
class RunningEmulator:
    """An emulator serving in this process; ``await close()`` (or ``async with``) stops it."""

    url: str
    server: ReplicaServer
    runner: web.AppRunner
    _closing: asyncio.Task[None] | None = field(default=None, repr=False)

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await self.runner.cleanup()

    async def die(self) -> None:
        """In-process death: reset every connection now, stop listening soon after."""
        self.server.abort_connections()
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())

    async def __aenter__(self) -> RunningEmulator:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


async def start_emulator(
    options: EmulatorOptions,
    *,
    die: Callable[[], Awaitable[None]] | None = None,
    clock: Clock | None = None,
) -> RunningEmulator:
    """Serve an emulated replica on ``options.host:options.port`` (port 0: any free port).

    ``die`` is what fault ``die_after`` does; by default the replica drops every connection
    and stops listening, leaving this process alive.  Raises ``ConfigError`` for an unknown
    model or accelerator or a port that cannot be bound.
    """
    profile = load_catalogue(options.catalogue).profile(options.model, options.accelerator)
    holder: list[RunningEmulator] = []

    async def default_die() -> None:
        await holder[0].die()

    server = ReplicaServer(options, profile, die or default_die, clock)
    runner = web.AppRunner(
        server.app(),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_GRACE_S,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, options.host, options.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {options.host}:{options.port}: {exc}") from None
    host, port = runner.addresses[0][:2]
    server.name = f"{host}:{port}"
    url_host = f"[{host}]" if ":" in host else host
    emulator = RunningEmulator(f"http://{url_host}:{port}", server, runner)
    holder.append(emulator)
    return emulator


async def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(DIE_EXIT_CODE)


async def _serve(options: EmulatorOptions) -> None:
    emulator = await start_emulator(options, die=_exit_now)
    print(f"emulator {options.model}@{options.accelerator} listening on {emulator.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emulator.close()


def run_emulator(options: EmulatorOptions) -> None:
    """Serve until SIGINT or SIGTERM (the ``fleetpilot emulate`` command); uses uvloop if
    it is installed.  Raises ``ConfigError`` before serving if the options cannot work."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is not built for every platform
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(options))
