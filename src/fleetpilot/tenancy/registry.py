"""Tenants and keys in the Store, and the view of them each gateway reads per request.

All of it is one document (:class:`~fleetpilot.tenancy.model.Registry`) written by
compare-and-set, so two admins (or two gateways seeding the fleet file's tenants) never lose
each other's writes.  A gateway never reads the Store on the hot path: :class:`Directory`
re-reads the document every ``refresh_s`` (one GET) and swaps in a new lookup table when its
version moved, so a revoked key is refused by every gateway within ``refresh_s`` plus a round
trip.  While the Store is down the last table read keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fleetpilot.errors import BadRequest, ModelNotFound, Unauthorized
from fleetpilot.store.base import Store, StoreUnavailable
from fleetpilot.tenancy.model import ApiKey, Budget, Limits, Registry, Tenant

__all__ = [
    "DEFAULT_TENANT",
    "Directory",
    "Principal",
    "create_key",
    "load",
    "put_tenant",
    "revoke_key",
    "rotate_key",
    "update",
]

log = logging.getLogger("fleetpilot.tenancy")

DOC = "tenancy/registry"
DEFAULT_TENANT = Tenant(name="default")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request runs as: a tenant, and the key it came with (None: anonymous or one of
    the fleet file's static ``client_keys``)."""

    tenant: Tenant
    key: ApiKey | None = None
    label: str = "anonymous"  # names the caller in logs and the ledger, never a secret

    def allows(self, model: str) -> None:
        for allowed in (self.tenant.models, self.key.models if self.key else None):
            if allowed is not None and model not in allowed:
                raise ModelNotFound(f"model {model!r} is not available to this key", param="model")


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode("utf-8")).hexdigest()


def parse_key(text: str) -> tuple[str, str] | None:
    """``fp-<id>.<secret>`` as (id, secret), or None when it is not one of ours."""
    if not text.startswith("fp-"):
        return None
    kid, dot, secret = text[3:].partition(".")
    if not dot or len(kid) != 12 or not secret:
        return None
    return kid, secret


# -- the document ---------------------------------------------------------------------------
async def load(store: Store) -> tuple[Registry, int]:
    raw, version = await store.get(DOC)
    return (Registry() if raw is None else Registry.model_validate_json(raw)), version


async def update(store: Store, change: Callable[[Registry], T]) -> T:
    """Apply ``change`` to the registry and write it back, again from a fresh read when
    someone else wrote first."""
    for _ in range(64):
        registry, version = await load(store)
        out = change(registry)
        if await store.put(DOC, registry.model_dump_json().encode(), version=version):
            return out
    raise StoreUnavailable("the tenant registry kept changing under this write")


async def put_tenant(store: Store, tenant: Tenant) -> Tenant:
    def change(r: Registry) -> Tenant:
        r.tenants[tenant.name] = tenant
        return tenant

    return await update(store, change)


async def create_key(
    store: Store,
    tenant: str,
    now: float,
    *,
    name: str = "",
    limits: Limits | None = None,
    budgets: list[Budget] | None = None,
    models: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """A new key for ``tenant``: its record, and the key itself (shown once, never kept)."""
    kid, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    key = ApiKey(
        id=kid,
        tenant=tenant,
        name=name,
        salt=salt,
        digest=_digest(salt, secret),
        created=now,
        limits=limits or Limits(),
        budgets=budgets or [],
        models=models,
    )

    def change(r: Registry) -> None:
        if tenant not in r.tenants:
            raise BadRequest(f"no tenant {tenant!r}", param="tenant")
        r.keys[kid] = key

    await update(store, change)
    return key, f"fp-{kid}.{secret}"


async def revoke_key(store: Store, kid: str, now: float) -> ApiKey:
    def change(r: Registry) -> ApiKey:
        key = r.keys.get(kid)
        if key is None:
            raise BadRequest(f"no key {kid!r}", param="id")
        if key.revoked is None:
            key = r.keys[kid] = key.model_copy(update={"revoked": now})
        return key

    return await update(store, change)


async def rotate_key(store: Store, kid: str, now: float) -> tuple[ApiKey, str]:
    """A new key with the old one's tenant, name, limits, budgets and models; the old one is
    revoked in the same write, so there is never a moment with both or neither."""
    secret, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
    new_id = secrets.token_hex(6)

    def change(r: Registry) -> ApiKey:
        old = r.keys.get(kid)
        if old is None or old.revoked is not None:
            raise BadRequest(f"no live key {kid!r}", param="id")
        r.keys[kid] = old.model_copy(update={"revoked": now})
        new = r.keys[new_id] = old.model_copy(
            update={"id": new_id, "salt": salt, "digest": _digest(salt, secret), "created": now}
        )
        return new

    new = await update(store, change)
    return new, f"fp-{new_id}.{secret}"


# -- the gateway's view ---------------------------------------------------------------------
class Directory:
    """Keys by id, from the last registry read; answers who a request's key belongs to.

    With no key in the registry and no static keys, every request runs anonymously as the
    tenant ``default`` (the demo's way); once a key exists, every request needs one.
    """

    def __init__(
        self, store: Store, *, refresh_s: float = 0.25, static_digests: tuple[str, ...] = ()
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.static = static_digests
        self.registry = Registry()
        self.version = -1
        self.up = True

    @property
    def anonymous(self) -> bool:
        return not self.registry.keys and not self.static

    def tenant(self, name: str) -> Tenant:
        return self.registry.tenants.get(name) or (
            DEFAULT_TENANT if name == "default" else Tenant(name=name)
        )

    async def refresh(self) -> None:
        raw, version = await self.store.get(DOC)
        if version != self.version:
            self.registry = Registry() if raw is None else Registry.model_validate_json(raw)
            self.version = version

    async def run(self, on_error: Callable[[Exception], None]) -> None:
        """Re-read the registry every ``refresh_s`` until cancelled."""
        while True:
            try:
                await self.refresh()
                self.up = True
            except (StoreUnavailable, ValueError) as exc:
                if self.up:
                    on_error(exc)
                self.up = False
            await asyncio.sleep(self.refresh_s)

    def principal(self, authorization: str | None) -> Principal:
        """The caller behind a bearer token (``authorization``: the token, or None)."""
        if self.anonymous:
            return Principal(self.tenant("default"))
        if authorization is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        parsed = parse_key(authorization)
        if parsed is not None:
            kid, secret = parsed
            key = self.registry.keys.get(kid)
            if key is not None and hmac.compare_digest(_digest(key.salt, secret), key.digest):
                if key.revoked is not None:
                    raise Unauthorized("this API key has been revoked")
                return Principal(self.tenant(key.tenant), key, key.prefix)
        elif self.static:
            digest = hashlib.sha256(authorization.encode("utf-8")).hexdigest()
            if any(hmac.compare_digest(digest, d) for d in self.static):
                return Principal(self.tenant("default"), None, "key:" + digest[:8])
        raise Unauthorized("invalid API key")
