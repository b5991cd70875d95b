"""Validated, immutable configuration: the gateway's knobs and the fleet it fronts.

A fleet file lists pools (model, accelerator, capacity class, replica URLs).  Prices and
profiles come from the catalogue unless a pool overrides them, so the same file fronts real
vLLM/TGI endpoints or emulators.  Everything is checked once here; nothing downstream
re-validates.

Example::

    gateway: {port: 8080, router: cost_slo, ttft_slo_s: 2.0}
    pools:
      - name: a10g-spot
        model: llama-3.1-8b
        accelerator: A10G
        capacity_class: spot
        replicas: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetpilot.catalogue import Catalogue, ProfileSpec
from fleetpilot.core.model import CapacityClass, Offering, Pool, Profile, Replica
from fleetpilot.core.routing import ROUTERS
from fleetpilot.errors import ConfigError
from fleetpilot.tenancy.model import TenancyConfig

__all__ = [
    "PRIVATE_NETWORKS",
    "FleetConfig",
    "GatewayConfig",
    "PoolConfig",
    "RetrievalConfig",
    "in_networks",
    "load_fleet",
    "replica_url",
]

# Where replicas live by default: loopback and the private ranges clusters and VPCs use.  A
# replica URL that a controller registers must resolve inside ``replica_networks``; a fleet
# serving from public addresses lists them.
PRIVATE_NETWORKS = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # shared address space: some CNIs give pods these
    "::1/128",
    "fc00::/7",
)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def replica_url(url: str) -> str:
    """``url`` as a replica's base URL (scheme, host and port, nothing else), or ValueError.

    A path, query, fragment or user name would let whoever registers a replica point the
    gateway's requests (and health checks) at any endpoint of any server: an SSRF.
    """
    if not isinstance(url, str):
        raise ValueError("a replica URL must be a string")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"replica URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"replica URL must start with http:// or https://: {url!r}")
    if not parts.hostname:
        raise ValueError(f"replica URL has no host: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"replica URL must not carry a user or password: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"replica URL must be scheme://host:port only, no path or query: {url!r}")
    if port == 0:
        raise ValueError(f"replica URL has port 0: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def in_networks(addresses: list[str], networks: list[IPvAnyNetwork]) -> bool:
    """Every one of ``addresses`` (IP literals) lies in one of ``networks``."""
    if not addresses:
        return False
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
        if not any(ip.version == n.version and ip in n for n in networks):
            return False
    return True


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    router: str = "cost_slo"
    ttft_slo_s: float = Field(default=2.0, gt=0, description="interactive TTFT target")
    batch_slo_s: float = Field(default=600.0, gt=0, description="batch TTFT target")
    shed_factor: float = Field(default=3.0, ge=1)
    target_miss: float = Field(
        default=0.005, ge=0, lt=1, description="share of first tokens the router lets miss"
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_attempts: int = Field(default=3, ge=1, description="replicas tried before failing")
    max_continuations: int = Field(default=3, ge=0, description="mid-stream resumptions")
    connect_timeout_s: float = Field(default=2.0, gt=0)
    first_byte_timeout_s: float = Field(default=60.0, gt=0)
    cooldown_s: float = Field(default=2.0, gt=0, description="first ejection of a replica")
    max_cooldown_s: float = Field(default=60.0, gt=0)
    health_interval_s: float = Field(default=2.0, gt=0)
    share_load: bool | None = Field(
        default=None,
        description="share each gateway's load on each replica through the store; default: "
        "on when gateways share one (a Redis store, or tenancy.gateway_replicas > 1)",
    )
    share_interval_s: float = Field(default=0.02, gt=0, description="how often (real s)")
    learn_profiles: bool = Field(
        default=True,
        description="correct each replica's profile by its observed stream timings",
    )
    scrape_metrics: bool = Field(
        default=False,
        description="read each replica's /metrics for other gateways' requests (no store)",
    )
    scrape_interval_s: float = Field(default=0.5, gt=0, description="how often (real s)")
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="real seconds per modelled second; match emulators run with --time-scale",
    )
    max_connections_per_replica: int = Field(default=512, ge=1)
    fast_lane: bool = Field(
        default=True,
        description="answer plain API POSTs outside aiohttp (see gateway.fastlane)",
    )
    fast_lane_streams: bool = Field(
        default=True, description="the fast lane serves streams too (False: aiohttp does)"
    )
    # -- who may call it --
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer credential of /admin/* (else FLEETPILOT_ADMIN_TOKEN; with neither, "
        "admin endpoints answer loopback connections only)",
    )
    client_keys: list[str] = Field(
        default_factory=list,
        description="SHA-256 hex digests of the API keys clients may use (`fleetpilot "
        "hash-key`); empty: no key is asked for",
    )
    replica_networks: list[IPvAnyNetwork] = Field(
        default_factory=lambda: [ipaddress.ip_network(n) for n in PRIVATE_NETWORKS],
        description="networks a replica registered through /admin/replicas must resolve into",
    )
    # -- what a client may ask for --
    min_ttft_slo_s: float = Field(default=0.05, gt=0, description="x-fleetpilot-ttft-slo floor")
    max_ttft_slo_s: float = Field(default=3600.0, gt=0, description="x-fleetpilot-ttft-slo cap")
    max_retry_after_s: float = Field(default=60.0, ge=1, description="Retry-After cap, real s")
    # -- connections (real seconds, both fronts alike) --
    header_timeout_s: float = Field(default=30.0, gt=0, description="a request head, whole")
    body_timeout_s: float = Field(default=30.0, gt=0, description="a request body, whole")
    keepalive_timeout_s: float = Field(default=75.0, gt=0, description="an idle client socket")
    upstream_idle_s: float = Field(default=30.0, gt=0, description="an idle replica socket")
    drain_grace_s: float = Field(default=30.0, ge=0, description="SIGTERM: time to finish")
    continuation_wait_s: float = Field(
        default=60.0, gt=0, description="how long a broken stream waits for any replica"
    )

    @field_validator("router")
    @classmethod
    def _known_router(cls, v: str) -> str:
        if v not in ROUTERS:
            raise ValueError(f"unknown router {v!r}; choose one of {sorted(ROUTERS)}")
        return v

    @field_validator("client_keys")
    @classmethod
    def _digests(cls, v: list[str]) -> list[str]:
        for key in v:
            if not _HEX64.fullmatch(key):
                raise ValueError(
                    "client_keys holds SHA-256 hex digests of keys, not keys "
                    "(`fleetpilot hash-key KEY` prints one)"
                )
        return v

    @model_validator(mode="after")
    def _slo_bounds(self) -> GatewayConfig:
        if self.min_ttft_slo_s > self.max_ttft_slo_s:
            raise ValueError("min_ttft_slo_s is over max_ttft_slo_s")
        return self


class PoolConfig(_Frozen):
    name: str
    model: str
    accelerator: str
    capacity_class: CapacityClass = CapacityClass.ON_DEMAND
    replicas: list[str] = Field(default_factory=list)
    price_per_hour: float | None = Field(default=None, gt=0, description="override catalogue")
    profile: str | ProfileSpec | None = Field(
        default=None,
        description="catalogue model whose profile and prices apply (default: model), or the "
        "profile itself (as `fleetpilot profile` writes it; then price_per_hour is required)",
    )
    engine: str = Field(
        default="auto",
        description="the replicas' engine kind (fleetpilot.engines), or auto: detected",
    )
    api_key: str | None = Field(default=None, description="sent to the replicas as Bearer")
    upstream_model: str | None = Field(
        default=None, description="model name the replicas expect, if it differs"
    )
    context_tokens: int | None = Field(
        default=None, ge=1, description="the replicas' context length (default: the profile's)"
    )
    price_per_mtok_input: float | None = Field(
        default=None, ge=0, description="what tenants pay per million prompt tokens"
    )
    price_per_mtok_output: float | None = Field(
        default=None, ge=0, description="what tenants pay per million completion tokens"
    )

    @field_validator("replicas")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [replica_url(u) for u in v]

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        from fleetpilot.engines import ENGINES

        if v != "auto" and v not in ENGINES:
            raise ValueError(f"unknown engine {v!r}; known: auto, {', '.join(ENGINES)}")
        return v

    @model_validator(mode="after")
    def _inline_priced(self) -> PoolConfig:
        if isinstance(self.profile, ProfileSpec) and self.price_per_hour is None:
            raise ValueError(f"pool {self.name!r}: an inline profile needs price_per_hour")
        return self

    def resolve(self, catalogue: Catalogue) -> tuple[Offering, Profile]:
        """This pool's offering and profile, from the catalogue or inline."""
        if isinstance(self.profile, ProfileSpec):
            spec = self.profile
            cls = CapacityClass(self.capacity_class)
            suffix = f"x{spec.count}" if spec.count > 1 else ""
            offering = Offering(
                name=f"{self.accelerator}{suffix}-{cls.value}",
                accelerator=self.accelerator,
                capacity_class=cls,
                price_per_hour=float(self.price_per_hour or 0.0),
                count=spec.count,
                startup_s=spec.startup_s,
            )
            profile = spec.build(self.model, self.accelerator)
        else:
            known_as = self.profile or self.model
            offering = catalogue.offering(known_as, self.accelerator, self.capacity_class)
            if self.price_per_hour is not None:
                offering = replace(offering, price_per_hour=self.price_per_hour)
            profile = replace(catalogue.profile(known_as, self.accelerator), model=self.model)
        if self.context_tokens is not None:
            profile = replace(profile, context_tokens=self.context_tokens)
        return offering, profile


Action = Literal["block", "flag", "log", "off"]


class GuardPolicy(_Frozen):
    """What the guard does about each finding: ``block`` (400 before the request goes on, or
    the answer cut), ``flag`` (served, with an ``x-fleetpilot-guard`` header and a metric),
    ``log`` (served; a log line and the metric), ``off`` (not checked).  Personal data may
    also be ``redact``ed: replaced by placeholders before the replica sees it."""

    attack: Action = "block"  # prompt injection or jailbreak in the user's own text
    indirect: Action = "block"  # the same in text that is not the user's (tool results)
    pii: Literal["block", "redact", "flag", "log", "off"] = "redact"
    output: Action = "block"  # the answer leaks the system prompt, its canary or a secret


class GuardConfig(_Frozen):
    """The fleet file's ``guard:`` section; off unless ``enabled``.  A route's policy (by
    path) wins over a tenant's, which wins over ``default``."""

    enabled: bool = False
    model: str | None = Field(default=None, description="a `guard train` file; default: shipped")
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0)
    canary: bool = Field(default=True, description="plant a canary token in system prompts")
    default: GuardPolicy = GuardPolicy()
    tenants: dict[str, GuardPolicy] = Field(default_factory=dict)
    routes: dict[str, GuardPolicy] = Field(default_factory=dict)

    def policy(self, tenant: str | None, path: str) -> GuardPolicy:
        if path in self.routes:
            return self.routes[path]
        if tenant is not None and tenant in self.tenants:
            return self.tenants[tenant]
        return self.default


class RetrievalConfig(_Frozen):
    """The fleet file's ``retrieval:`` section: ``POST /v1/retrieve``, and chat requests that
    ask for it (``"retrieval": true`` or an object with ``k``, ``mode``, ``filters``) get the
    top chunks of their tenant's documents, with citations, before their last user turn."""

    enabled: bool = False
    store: str = Field(
        default="fleetpilot-rag.db",
        description="a `rag ingest` store: sqlite file or postgresql://",
    )
    k: int = Field(default=4, ge=1, le=50, description="chunks added to a chat request")
    max_k: int = Field(default=50, ge=1, le=1000, description="most a /v1/retrieve may ask for")
    mode: Literal["hybrid", "vector", "keyword"] = "hybrid"
    max_context_tokens: int = Field(default=2000, ge=64, description="retrieved text per request")
    vector_weight: float = Field(default=1.0, ge=0)
    keyword_weight: float = Field(default=1.0, ge=0)


class StoreConfig(_Frozen):
    """The shared store: ``memory://``, ``sqlite:///path/file.db`` or ``redis://host:port/db``
    (one setting, read by the gateway and the controller alike)."""

    url: str = Field(pattern=r"^(memory|sqlite|redis|rediss|unix)://")


class FleetConfig(_Frozen):
    gateway: GatewayConfig = GatewayConfig()
    pools: list[PoolConfig] = Field(default_factory=list)
    store: StoreConfig | None = Field(
        default=None, description="shared state; tenants, budgets and limits need one"
    )
    tenancy: TenancyConfig = TenancyConfig()
    guard: GuardConfig = GuardConfig()
    retrieval: RetrievalConfig = RetrievalConfig()

    @field_validator("pools")
    @classmethod
    def _unique(cls, v: list[PoolConfig]) -> list[PoolConfig]:
        names = [p.name for p in v]
        if len(set(names)) != len(names):
            raise ValueError("pool names must be unique")
        return v

    @property
    def shares_load(self) -> bool:
        """Whether gateways share their load on replicas through the store (``share_load``)."""
        if self.store is None:
            return False
        if self.gateway.share_load is not None:
            return self.gateway.share_load
        shared = self.store.url.startswith(("redis", "unix"))
        return shared or self.tenancy.gateway_replicas > 1

    def build(self, catalogue: Catalogue) -> tuple[list[Pool], list[Replica]]:
        """Resolve pools against the catalogue into core values."""
        pools: list[Pool] = []
        replicas: list[Replica] = []
        for pc in self.pools:
            offering, profile = pc.resolve(catalogue)
            pools.append(Pool(pc.name, pc.model, offering, len(pc.replicas), profile))
            for i, url in enumerate(pc.replicas):
                replicas.append(
                    Replica(
                        id=f"{pc.name}/{i}",
                        pool=pc.name,
                        model=pc.model,
                        url=url,
                        offering=offering,
                        profile=profile,
                        engine=pc.engine,
                    )
                )
        return pools, replicas


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: str | Path, model: type[M], what: str) -> M:
    """Read a YAML file into ``model``; every failure is a ConfigError naming ``what``."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return model.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"invalid {what} {path}:\n{exc}") from exc


def load_fleet(path: str | Path) -> FleetConfig:
    return load_yaml_model(path, FleetConfig, "fleet file")
