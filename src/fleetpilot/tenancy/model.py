"""Tenants, keys, budgets and limits as data: what the fleet file and the admin API take.

A key belongs to one tenant; a key may narrow its tenant (its own limits, budgets and
models) but never widen it — a request must pass the key's limits *and* the tenant's.
Keys are kept only as salted SHA-256 digests of their secret: a key is 256 random bits, so a
fast hash is enough (nothing to brute-force), and the salt keeps two stores from sharing
digests.  ``prefix`` (``fp-<id>``) names a key in listings and logs without being one.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ApiKey",
    "Budget",
    "Limits",
    "Period",
    "Registry",
    "TenancyConfig",
    "Tenant",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


class Budget(_Model):
    """At most ``usd`` of spend per UTC day, calendar month, or in all."""

    usd: float = Field(gt=0)
    period: Period = Period.MONTH
    alerts: list[float] = Field(
        default_factory=lambda: [0.5, 0.8, 1.0], description="shares that raise an alert"
    )


class Limits(_Model):
    """Requests and tokens (prompt + max_tokens, settled to what was used) per minute."""

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)


class Tenant(_Model):
    name: str = Field(pattern=_NAME)
    budgets: list[Budget] = Field(default_factory=list)
    limits: Limits = Limits()
    model_limits: dict[str, Limits] = Field(
        default_factory=dict, description="per model, for this tenant"
    )
    models: list[str] | None = Field(default=None, description="allowed models; None: all")


class ApiKey(_Model):
    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    tenant: str
    name: str = ""
    salt: str
    digest: str
    created: float
    revoked: float | None = None
    budgets: list[Budget] = Field(default_factory=list)
    limits: Limits = Limits()
    models: list[str] | None = None

    @property
    def prefix(self) -> str:
        return f"fp-{self.id}"

    def public(self) -> dict[str, object]:
        """What a listing shows: everything but the salt and digest."""
        return self.model_dump(mode="json", exclude={"salt", "digest"}) | {"prefix": self.prefix}


class Registry(_Model):
    """Every tenant and key: one document in the Store, written by compare-and-set."""

    tenants: dict[str, Tenant] = Field(default_factory=dict)
    keys: dict[str, ApiKey] = Field(default_factory=dict)


class TenancyConfig(_Model):
    """The fleet file's ``tenancy:`` section (on only with a ``store:``)."""

    tenants: list[Tenant] = Field(
        default_factory=list, description="created or updated at start-up"
    )
    on_store_outage: str = Field(
        default="closed",
        pattern="^(closed|open)$",
        description="closed: 503 while the store is down; open: admit against local "
        "limits and budgets, each divided by gateway_replicas",
    )
    gateway_replicas: int = Field(default=1, ge=1, description="for the fail-open split")
    hold_ttl_s: float = Field(
        default=900.0, gt=0, description="a budget hold's life if its gateway dies"
    )
    refresh_s: float = Field(
        default=0.25, gt=0, le=1.0, description="how often keys are re-read (revocation)"
    )
    spend_cap_per_hour: float | None = Field(
        default=None, gt=0, description="the fleet's $/hour, enforced at admission as well"
    )
    batch_cap_share: float = Field(
        default=0.8, gt=0, le=1, description="batch requests stop at this share of the cap"
    )
    alert_webhook: str | None = Field(default=None, description="POSTed budget alerts")
    alert_secret: str | None = Field(default=None, description="HMAC-SHA256 signs them")

    @field_validator("tenants")
    @classmethod
    def _unique(cls, tenants: list[Tenant]) -> list[Tenant]:
        names = [t.name for t in tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenant names must be unique")
        return tenants
