"""The gateway's HTTP app: it wires intake, the pipeline of stages, the fleet view and
metrics together.

No routing or retry logic lives here (see :mod:`fleetpilot.gateway.stages.upstream`), and no
stage: the chain is composed once (:func:`pipeline`) and both fronts only hand it calls and
write its answers.  This module
owns the HTTP surface, the middleware that gives each request its id, keeps ``/admin/*`` to
holders of the admin credential (:mod:`fleetpilot.gateway.auth`) and turns every failure into
OpenAI's error JSON, and the background health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from fleetpilot.catalogue import Catalogue, load_catalogue
from fleetpilot.clock import Clock, SystemClock
from fleetpilot.config import FleetConfig, load_fleet
from fleetpilot.core.model import ReplicaState
from fleetpilot.core.routing import ROUTERS
from fleetpilot.engines import DEFAULT as DEFAULT_ENGINE
from fleetpilot.engines import detect, in_flight
from fleetpilot.errors import (
    ApiError,
    BadRequest,
    ConfigError,
    PayloadTooLarge,
)
from fleetpilot.gateway.aiohttp_front import expect_continue, response, write
from fleetpilot.gateway.appkeys import (
    ADMIN,
    CONFIG,
    FLEET,
    METRICS,
    PIPELINE,
    PROXY,
    RETRIEVAL,
    TENANCY,
)
from fleetpilot.gateway.auth import ADMIN_ENV, AdminAuth, ClientKeys, bearer
from fleetpilot.gateway.fastlane import listen
from fleetpilot.gateway.fleet import LiveFleet, LiveReplica
from fleetpilot.gateway.intake import admit, new_request_id
from fleetpilot.gateway.membership import add_membership_routes
from fleetpilot.gateway.metrics import GatewayMetrics
from fleetpilot.gateway.pipeline import Call, Handler, Stage, compose, error_reply
from fleetpilot.gateway.shared_load import SharedLoad
from fleetpilot.gateway.stages.auth import auth_stage
from fleetpilot.gateway.stages.tenant import admission_stage, tenant_auth_stage
from fleetpilot.gateway.stages.upstream import Proxy
from fleetpilot.gateway.tenancy_routes import add_tenancy_routes
from fleetpilot.gateway.upstream import Upstream
from fleetpilot.store import Store, StoreUnavailable, open_store
from fleetpilot.tenancy import registry
from fleetpilot.tenancy.admission import Admission, TenancyMetrics
from fleetpilot.tenancy.prices import Prices
from fleetpilot.tenancy.registry import Directory, Principal

__all__ = ["CONFIG", "FLEET", "METRICS", "PROXY", "TENANCY", "create_app", "run_gateway"]

log = logging.getLogger("fleetpilot.gateway")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = web.RequestKey("request_id", str)


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    rid = request[_REQUEST_ID] = new_request_id()
    try:
        if request.path.startswith("/admin"):
            request.app[ADMIN].check(request.headers, request.remote)
        return await handler(request)
    except ApiError as exc:
        return response(error_reply(exc, rid))
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].gateway.max_body_bytes
        return response(error_reply(PayloadTooLarge(f"request body over {limit} bytes"), rid))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = ApiError(exc.reason)
        err.status, err.type = exc.status, "invalid_request_error"
        return response(error_reply(err, rid))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s unhandled error on %s %s", rid, request.method, request.path)
        return response(error_reply(ApiError("internal gateway error"), rid))


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over {limit}")
    if request.content.is_eof():  # the whole body came with the head: nothing to wait for
        return await request.read()
    try:
        async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
            return await request.read()
    except TimeoutError:
        raise BadRequest("request body not received in time") from None


def _api(kind: str) -> _Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        app = request.app
        cfg = app[CONFIG].gateway
        raw = await _read_body(request, cfg.max_body_bytes, cfg.body_timeout_s)
        rid = request[_REQUEST_ID]
        inbound = admit(kind, raw, request.headers, cfg, app[FLEET], rid)
        return await write(await app[PIPELINE](Call(inbound, rid)), request)

    return handler


async def _models(request: web.Request) -> web.Response:
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "fleetpilot"}
        for m in request.app[FLEET].models
    ]
    return web.json_response({"object": "list", "data": data})


async def _health(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    now = fleet.clock.now()
    ready = sum(1 for r in fleet.replicas if r.frozen(now).routable)
    return web.json_response({"status": "ok", "replicas_ready": ready})


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    for r in request.app[FLEET].replicas:
        metrics.in_flight.labels(r.base.pool).set(0)
    for r in request.app[FLEET].replicas:
        metrics.in_flight.labels(r.base.pool).inc(r.in_flight)
    params = request.app[PROXY].params
    for model in request.app[FLEET].models:
        metrics.headroom.labels(model).set(request.app[FLEET].headroom(model, params))
    return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")


async def _fleet_view(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    now = fleet.clock.now()
    rows: list[dict[str, Any]] = []
    for r in fleet.replicas:
        v = r.frozen(now)
        rows.append(
            {
                "id": r.id,
                "pool": r.base.pool,
                "url": r.base.url,
                "state": r.state.value,
                "healthy": v.healthy,
                "in_flight": r.in_flight,
                "remaining_tokens": r.remaining_tokens,
                "offering": r.base.offering.name,
                "price_per_hour": r.base.offering.price_per_hour,
            }
        )
    return web.json_response({"replicas": rows})


def _set_state(state: ReplicaState) -> _Handler:
    async def handler(request: web.Request) -> web.Response:
        try:
            key = (await request.json())["replica"]
        except (ValueError, KeyError, TypeError):
            raise BadRequest('body must be {"replica": "<id or url>"}') from None
        fleet = request.app[FLEET]
        live = fleet.find(str(key))
        if live is None:
            raise BadRequest(f"no replica {key!r}", param="replica")
        fleet.set_state(live.id, state)
        return web.json_response({"replica": live.id, "state": state.value})

    return handler


async def _detect_engine(app: web.Application, live: LiveReplica) -> None:
    """Tell what engine serves a replica whose pool says ``engine: auto``, from its
    ``/v1/models`` and ``/metrics``; it stays vLLM-shaped until one of them answers."""
    upstream = app[PROXY].upstream
    models: Any = None
    metrics: str | None = None
    with contextlib.suppress(Exception):
        status, data = await upstream.get(live.base.url + "/v1/models", timeout=1.0)
        if status == 200:
            models = json.loads(data)
    with contextlib.suppress(Exception):
        status, data = await upstream.get(live.base.url + "/metrics", timeout=1.0)
        if status == 200:
            metrics = data.decode("utf-8", "replace")
    kind = detect(models, metrics)
    if kind is None and (models is not None or metrics is not None):
        # it answered but does not say what it is: take it for vLLM-shaped, and stop asking
        kind = DEFAULT_ENGINE
        log.info("replica %s does not say what engine it is: taken for %s", live.id, kind)
    if kind is not None and live.base.engine == "auto":
        app[FLEET].set_engine(live.id, kind)
        log.info("replica %s runs %s", live.id, kind)


def _undetected(app: web.Application) -> list[LiveReplica]:
    return [r for r in app[FLEET].replicas if r.base.engine == "auto"]


async def _health_loop(app: web.Application) -> None:
    """Active checks: an unreachable replica is ejected; one that answers again is back."""
    fleet, upstream = app[FLEET], app[PROXY].upstream
    cfg = app[CONFIG].gateway
    down: set[str] = set()

    async def check(rid: str, url: str) -> None:
        try:
            status, _ = await upstream.get(url + "/health", timeout=min(1.0, cfg.health_interval_s))
            ok = status == 200
        except Exception:
            ok = False
        live = fleet.find(rid)
        if ok and live is not None and live.base.engine == "auto":
            await _detect_engine(app, live)
        if ok and rid in down:
            down.discard(rid)
            fleet.recovered(rid)
        elif not ok and fleet.find(rid) is not None:
            down.add(rid)
            fleet.failed(rid)

    while True:
        await asyncio.gather(
            *(check(r.id, r.base.url) for r in fleet.replicas if r.state is not ReplicaState.GONE)
        )
        await asyncio.sleep(cfg.health_interval_s)


@dataclass(slots=True)
class Tenancy:
    """The gateway's tenancy parts, there only when a store is configured."""

    store: Store
    directory: Directory
    admission: Admission
    prices: Prices


def tenancy_of(
    config: FleetConfig, fleet: LiveFleet, metrics: GatewayMetrics, post: Any
) -> Tenancy | None:
    if config.store is None:
        return None
    store = open_store(config.store.url)
    directory = Directory(
        store,
        refresh_s=config.tenancy.refresh_s,
        static_digests=tuple(config.gateway.client_keys),
    )
    admission = Admission(store, config.tenancy, TenancyMetrics(metrics.registry), post=post)
    overrides = {p.name: (p.price_per_mtok_input, p.price_per_mtok_output) for p in config.pools}
    return Tenancy(store, directory, admission, Prices(fleet.pools, overrides))


async def _scrape_loop(app: web.Application) -> None:
    """Other gateways' requests on each replica, from the replica's own ``/metrics``: with
    several gateways and no store to share their load through, each one's in-flight
    counts are only its share of the truth."""
    fleet, upstream = app[FLEET], app[PROXY].upstream
    interval = app[CONFIG].gateway.scrape_interval_s

    async def scrape(live: LiveReplica) -> None:
        ours = live.in_flight
        try:
            status, text = await upstream.get(live.base.url + "/metrics", timeout=1.0)
        except Exception:
            return  # the health checks deal with a replica that does not answer
        if status == 200:
            live.scraped(in_flight(text.decode("utf-8", "replace"), live.engine), ours)

    while True:
        now = fleet.clock.now()
        await asyncio.gather(*(scrape(r) for r in fleet.replicas if r.frozen(now).routable))
        await asyncio.sleep(interval)


def detector_of(config: FleetConfig) -> Any:
    """The guard's detector when the guard is on (imported only then: a gateway without it
    does no guard work), shared by the guard stage and retrieval's screening."""
    if not config.guard.enabled:
        return None
    from fleetpilot.guard.detector import Detector

    path = Path(config.guard.model) if config.guard.model else None
    try:
        return Detector.from_path(path, threshold=config.guard.threshold)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"guard.model: {exc}") from None


def retrieval_of(config: FleetConfig, metrics: GatewayMetrics, detector: Any) -> Any:
    """The screened search over the configured RAG store, when retrieval is on."""
    if not config.retrieval.enabled:
        return None
    from fleetpilot.gateway.stages.retrieval import Retrieval, RetrievalMetrics
    from fleetpilot.rag.search import Retriever
    from fleetpilot.rag.store import open_store as open_rag

    try:
        store = open_rag(config.retrieval.store, create=False)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"retrieval.store {config.retrieval.store!r}: {exc}") from None
    metrics_ = RetrievalMetrics(metrics.registry)
    return Retrieval(Retriever(store), config.retrieval, metrics_, detector, config.guard)


def pipeline(
    config: FleetConfig,
    upstream: Proxy,
    tenancy: Tenancy | None = None,
    *,
    detector: Any = None,
    retrieval: Any = None,
) -> Handler:
    """The chain of stages that are on, in DESIGN.md's order, ending upstream."""
    stages: list[Stage] = []
    keys = ClientKeys(tuple(config.gateway.client_keys))
    if tenancy is not None:
        stages.append(tenant_auth_stage(tenancy.directory))
        stages.append(admission_stage(tenancy.admission, tenancy.prices, upstream.fleet))
    elif keys.required:
        stages.append(auth_stage(keys))
    if detector is not None:
        from fleetpilot.gateway.stages.guard import GuardMetrics, guard_stage

        stages.append(guard_stage(config.guard, detector, GuardMetrics(upstream.metrics.registry)))
    if retrieval is not None:
        from fleetpilot.gateway.stages.retrieval import retrieval_stage

        stages.append(retrieval_stage(retrieval))
    return compose(stages, upstream)


def _caller(app: web.Application, headers: Any) -> Principal:
    """Who is calling a route outside the pipeline, by the same rules as its auth stages."""
    tenancy = app[TENANCY]
    if tenancy is not None:
        principal: Principal = tenancy.directory.principal(bearer(headers))
        return principal
    keys = ClientKeys(tuple(app[CONFIG].gateway.client_keys))
    if keys.required:
        return Principal(registry.DEFAULT_TENANT, None, "key:" + keys.check(headers)[:8])
    return Principal(registry.DEFAULT_TENANT)


async def _retrieve(request: web.Request) -> web.Response:
    """``POST /v1/retrieve``: the top chunks of the caller's own documents."""
    from fleetpilot.gateway.stages.retrieval import Query

    app = request.app
    retrieval = app[RETRIEVAL]
    principal = _caller(app, request.headers)
    cfg = app[CONFIG].gateway
    raw = await _read_body(request, cfg.max_body_bytes, cfg.body_timeout_s)
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    text = body.get("query")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("'query' must be a non-empty string", param="query")
    query = Query.parse(body, text, retrieval.config)
    tenant = principal.tenant.name
    hits, flags = await retrieval.search(query, tenant, "/v1/retrieve", request[_REQUEST_ID])
    model = retrieval.retriever.store.active_model()
    data = [
        {"object": "retrieval.chunk", "id": h.chunk_id, "document": h.doc_id,
         "source": h.source, "text": h.text, "start": h.start, "end": h.end,
         "score": h.score, "metadata": h.meta}
        for h in hits
    ]  # fmt: skip
    headers = {"x-request-id": request[_REQUEST_ID]}
    if flags:
        headers["x-fleetpilot-guard"] = "; ".join(flags)
    reply = {"object": "list", "data": data, "mode": query.mode,
             "model": model.name if model else None}  # fmt: skip
    return web.json_response(reply, headers=headers)


async def _start_tenancy(config: FleetConfig, t: Tenancy) -> None:
    """Seed the fleet file's tenants, read the registry once and say who may call."""
    try:
        for tenant in config.tenancy.tenants:
            await registry.put_tenant(t.store, tenant)
        await t.directory.refresh()
        await t.admission.sync_clock()
    except StoreUnavailable as exc:
        log.error("the shared store is unreachable at start-up: %s", exc)
    if t.directory.anonymous:
        log.warning(
            "no API keys in the store (%s): serving every request anonymously as tenant "
            "'default' until the first key is created (POST /admin/keys)",
            config.store.url if config.store else "",
        )


_Add = Callable[[str, _Handler], object]


def _registry_unreadable(exc: Exception) -> None:
    log.error("cannot read the tenant registry (keys keep their last state): %s", exc)


class _MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"


def _routes(app: web.Application) -> tuple[_Add, _Add, Callable[[], None]]:
    """``add_post`` and ``add_get`` with the gateway's own ``Expect`` handling, and the
    catch-all to add last: every request reaches a route of ours (aiohttp's own 404/405
    routes would answer an ``Expect`` in plain text, before any middleware)."""
    known: set[str] = set()  # paths with a route of their own

    def post(path: str, handler: _Handler) -> object:
        known.add(path)
        return app.router.add_post(path, handler, expect_handler=expect_continue)

    def get(path: str, handler: _Handler) -> object:
        known.add(path)
        return app.router.add_get(path, handler, expect_handler=expect_continue)

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        if request.path not in known:
            raise web.HTTPNotFound()
        raise _MethodNotAllowed(f"{request.method} is not allowed here")

    def catch_all() -> None:
        app.router.add_route("*", "/{tail:.*}", elsewhere, expect_handler=expect_continue)

    return post, get, catch_all


def create_app(
    config: FleetConfig,
    catalogue: Catalogue | None = None,
    clock: Clock | None = None,
    *,
    health_checks: bool = True,
) -> web.Application:
    catalogue = catalogue or load_catalogue()
    cfg = config.gateway
    clock = clock or SystemClock(cfg.time_scale)
    pools, replicas = config.build(catalogue)
    fleet = LiveFleet(
        clock, pools, replicas, cooldown_s=cfg.cooldown_s, max_cooldown_s=cfg.max_cooldown_s
    )
    metrics = GatewayMetrics(fleet.idle_costs, fleet.corrections, fleet.bursts)
    upstream = Upstream(
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.first_byte_timeout_s,
        limit_per_host=cfg.max_connections_per_replica,
        idle_s=cfg.upstream_idle_s,
    )
    proxy = Proxy(
        cfg, fleet, upstream, metrics, ROUTERS[cfg.router], clock, {p.name: p for p in config.pools}
    )
    app = web.Application(middlewares=[_errors], client_max_size=cfg.max_body_bytes)
    app[FLEET], app[PROXY], app[METRICS], app[CONFIG] = fleet, proxy, metrics, config
    app[ADMIN] = admin = AdminAuth.from_config(cfg)

    async def post(url: str, body: bytes, headers: dict[str, str]) -> None:
        resp = await upstream.send(url, body, read_timeout=5.0, headers=headers)
        await resp.read()

    tenancy = app[TENANCY] = tenancy_of(config, fleet, metrics, post)
    detector = detector_of(config)
    retrieval = app[RETRIEVAL] = retrieval_of(config, metrics, detector)
    app[PIPELINE] = pipeline(config, proxy, tenancy, detector=detector, retrieval=retrieval)
    if tenancy is None and not cfg.client_keys:
        log.warning("no API keys and no store: serving every request anonymously")
    if admin.token is None:
        log.warning(
            "no admin token (gateway.admin_token or %s): /admin/* answers loopback "
            "connections only",
            ADMIN_ENV,
        )
    route_post, get, catch_all = _routes(app)
    route_post("/v1/chat/completions", _api("chat"))
    route_post("/v1/completions", _api("completions"))
    route_post("/v1/embeddings", _api("embeddings"))
    if retrieval is not None:
        route_post("/v1/retrieve", _retrieve)
    get("/v1/models", _models)
    get("/health", _health)
    get("/metrics", _metrics)
    get("/admin/fleet", _fleet_view)
    route_post("/admin/drain", _set_state(ReplicaState.DRAINING))
    route_post("/admin/undrain", _set_state(ReplicaState.READY))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await upstream.start()
        await asyncio.gather(*(_detect_engine(app, r) for r in _undetected(app)))
        tasks = [asyncio.create_task(_health_loop(app))] if health_checks else []
        if tenancy is not None and config.shares_load:
            shared = SharedLoad(tenancy.store, fleet, interval_s=cfg.share_interval_s)
            tasks.append(asyncio.create_task(shared.run()))
        elif cfg.scrape_metrics:
            tasks.append(asyncio.create_task(_scrape_loop(app)))
        if tenancy is not None:
            await _start_tenancy(config, tenancy)
            tasks.append(asyncio.create_task(tenancy.directory.run(_registry_unreadable)))
            tasks.append(asyncio.create_task(tenancy.admission.run()))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if tenancy is not None:
            await tenancy.admission.drain()
            with contextlib.suppress(StoreUnavailable):
                await tenancy.admission.flush()
            await tenancy.store.close()
        if retrieval is not None:
            retrieval.retriever.store.close()
        await upstream.close()

    app.cleanup_ctx.append(lifecycle)
    add_membership_routes(route_post, catalogue)  # a controller in another process adds/removes
    if tenancy is not None:
        add_tenancy_routes(route_post, get, tenancy.store, tenancy.directory, tenancy.admission)
    catch_all()
    return app


def run_gateway(
    fleet_path: Path,
    *,
    host: str | None = None,
    port: int | None = None,
    router: str | None = None,
    catalogue: Path | None = None,
) -> None:
    try:
        config = load_fleet(fleet_path)
        overrides = {k: v for k, v in {"host": host, "port": port, "router": router}.items() if v}
        if overrides:
            merged = config.gateway.model_dump() | overrides
            config = config.model_copy(update={"gateway": type(config.gateway)(**merged)})
        cat = load_catalogue(catalogue)
        level = os.environ.get("FLEETPILOT_LOG_LEVEL", "WARNING").upper()
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
        app = create_app(config, cat)
    except (ConfigError, ValueError) as exc:
        print(f"fleetpilot gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(_serve(app, config.gateway.host, config.gateway.port))
    except ConfigError as exc:
        print(f"fleetpilot gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# Objects a request allocates before the young generation is collected (CPython's default is
# 700).  Hundreds of requests in flight keep thousands of young objects alive, so at 700 the
# collector ran every few requests and rescanned the same survivors: the tenancy stages at
# concurrency 256 lost a fifth of their throughput to it.  Chosen on that point alone; the
# latency points of bench/gateway_overhead.py are the check that pauses stay short.
GC_YOUNG = 20_000


async def _serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then drain: stop accepting, let what is in flight
    finish (up to ``drain_grace_s``), close the rest and return."""
    try:
        listening = await listen(app, host, port, fast_lane=app[CONFIG].gateway.fast_lane)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    # Everything built so far lives as long as the process: keep it out of the collector's
    # generations, so a full collection scans only what requests allocate (12 ms -> well
    # under 1 ms, a pause every request in flight would otherwise wait for).
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    print(f"fleetpilot gateway listening on http://{host}:{listening.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("fleetpilot gateway: draining", file=sys.stderr, flush=True)
    await listening.stop(app[CONFIG].gateway.drain_grace_s)
