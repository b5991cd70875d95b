"""The tenancy admin API and a tenant's own usage, over HTTP.

Behind the admin credential, like every ``/admin/*`` endpoint::

    GET  /admin/tenants                 -> {"tenants": [...]}
    POST /admin/tenants  {Tenant}       -> the tenant, created or replaced
    GET  /admin/keys[?tenant=]          -> {"keys": [...]}   (prefixes, never secrets)
    POST /admin/keys     {"tenant", "name"?, "limits"?, "budgets"?, "models"?}
                                        -> 201 {"key": "fp-…", ...}  (the only time it is shown)
    POST /admin/keys/{id}/rotate        -> 201 {"key": "fp-…", ...}  (the old one revoked)
    POST /admin/keys/{id}/revoke        -> the key, revoked
    GET  /admin/spend[?by=tenant,model&tenant=&since=&until=]  -> {"rows": [...]}

With a tenant's own key::

    GET  /v1/usage[?by=key,model,day&since=&until=]  -> that tenant's rows and budgets

The rules live in :mod:`fleetpilot.tenancy`; this module parses and answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetpilot.errors import BadRequest
from fleetpilot.gateway.auth import bearer
from fleetpilot.store.base import Store
from fleetpilot.tenancy import ledger, registry
from fleetpilot.tenancy.admission import Admission, period_label
from fleetpilot.tenancy.model import Budget, Limits, Tenant
from fleetpilot.tenancy.registry import Directory

__all__ = ["add_tenancy_routes"]

_Add = Callable[[str, Any], object]


class _NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    name: str = ""
    limits: Limits = Limits()
    budgets: list[Budget] = Field(default_factory=list)
    models: list[str] | None = None


async def _json(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise BadRequest(f"invalid body: {first['msg']}", param=where) from None


def _window(request: web.Request) -> tuple[float | None, float | None]:
    def when(name: str) -> float | None:
        try:
            return ledger.parse_time(request.query.get(name))
        except ValueError as exc:
            raise BadRequest(str(exc), param=name) from None

    return when("since"), when("until")


def _groups(request: web.Request, default: str) -> list[str]:
    try:
        return ledger.groups(request.query.get("by", default))
    except ValueError as exc:
        raise BadRequest(str(exc), param="by") from None


def add_tenancy_routes(
    post: _Add, get: _Add, store: Store, directory: Directory, admission: Admission
) -> None:
    async def tenants(request: web.Request) -> web.Response:
        reg, _ = await registry.load(store)
        return web.json_response(
            {"tenants": [t.model_dump(mode="json") for t in reg.tenants.values()]}
        )

    async def put_tenant(request: web.Request) -> web.Response:
        tenant = await registry.put_tenant(store, await _json(request, Tenant))
        return web.json_response(tenant.model_dump(mode="json"))

    async def keys(request: web.Request) -> web.Response:
        reg, _ = await registry.load(store)
        only = request.query.get("tenant")
        rows = [k.public() for k in reg.keys.values() if only is None or k.tenant == only]
        return web.json_response({"keys": rows})

    async def new_key(request: web.Request) -> web.Response:
        body: _NewKey = await _json(request, _NewKey)
        key, secret = await registry.create_key(
            store,
            body.tenant,
            admission.now(),
            name=body.name,
            limits=body.limits,
            budgets=body.budgets,
            models=body.models,
        )
        return web.json_response({"key": secret, **key.public()}, status=201)

    async def rotate(request: web.Request) -> web.Response:
        key, secret = await registry.rotate_key(store, request.match_info["id"], admission.now())
        return web.json_response({"key": secret, **key.public()}, status=201)

    async def revoke(request: web.Request) -> web.Response:
        key = await registry.revoke_key(store, request.match_info["id"], admission.now())
        return web.json_response(key.public())

    async def spend(request: web.Request) -> web.Response:
        since, until = _window(request)
        by = _groups(request, "tenant")
        records = [
            r
            async for r in ledger.entries(
                store, since=since, until=until, tenant=request.query.get("tenant")
            )
        ]
        return web.json_response({"by": by, "rows": ledger.summarise(records, by)})

    async def usage(request: web.Request) -> web.Response:
        principal = directory.principal(bearer(request.headers))
        tenant = principal.tenant
        since, until = _window(request)
        by = _groups(request, "key,model,day")
        records = [
            r async for r in ledger.entries(store, since=since, until=until, tenant=tenant.name)
        ]
        budgets = []
        now = admission.now()
        for b in tenant.budgets:
            label, left = period_label(b.period, now)
            committed = await store.value(f"b:t:{tenant.name}:{label}")
            budgets.append(
                {
                    "usd": b.usd,
                    "period": b.period.value,
                    "committed_usd": committed,
                    "remaining_usd": max(0.0, b.usd - committed),
                    "resets_in_s": left,
                }
            )
        return web.json_response(
            {
                "tenant": tenant.name,
                "by": by,
                "rows": ledger.summarise(records, by),
                "budgets": budgets,
            }
        )

    get("/admin/tenants", tenants)
    post("/admin/tenants", put_tenant)
    get("/admin/keys", keys)
    post("/admin/keys", new_key)
    post("/admin/keys/{id}/rotate", rotate)
    post("/admin/keys/{id}/revoke", revoke)
    get("/admin/spend", spend)
    get("/v1/usage", usage)
