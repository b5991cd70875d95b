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

from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetpilot.catalogue import Catalogue
from fleetpilot.core.model import CapacityClass, Pool, Replica
from fleetpilot.core.routing import ROUTERS
from fleetpilot.errors import ConfigError

__all__ = ["FleetConfig", "GatewayConfig", "PoolConfig", "load_fleet"]


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
    scrape_metrics: bool = False
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="real seconds per modelled second; match emulators run with --time-scale",
    )
    max_connections_per_replica: int = Field(default=512, ge=1)
    fast_lane: bool = Field(
        default=True,
        description="answer plain non-streamed API POSTs outside aiohttp (see gateway.fastlane)",
    )

    @field_validator("router")
    @classmethod
    def _known_router(cls, v: str) -> str:
        if v not in ROUTERS:
            raise ValueError(f"unknown router {v!r}; choose one of {sorted(ROUTERS)}")
        return v


class PoolConfig(_Frozen):
    name: str
    model: str
    accelerator: str
    capacity_class: CapacityClass = CapacityClass.ON_DEMAND
    replicas: list[str] = Field(default_factory=list)
    price_per_hour: float | None = Field(default=None, gt=0, description="override catalogue")
    profile: str | None = Field(
        default=None, description="catalogue model whose profile and prices apply (default: model)"
    )
    api_key: str | None = Field(default=None, description="sent to the replicas as Bearer")
    upstream_model: str | None = Field(
        default=None, description="model name the replicas expect, if it differs"
    )

    @field_validator("replicas")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"replica URL must start with http:// or https://: {url!r}")
        return [u.rstrip("/") for u in v]


class FleetConfig(_Frozen):
    gateway: GatewayConfig = GatewayConfig()
    pools: list[PoolConfig] = Field(default_factory=list)

    @field_validator("pools")
    @classmethod
    def _unique(cls, v: list[PoolConfig]) -> list[PoolConfig]:
        names = [p.name for p in v]
        if len(set(names)) != len(names):
            raise ValueError("pool names must be unique")
        return v

    def build(self, catalogue: Catalogue) -> tuple[list[Pool], list[Replica]]:
        """Resolve pools against the catalogue into core values."""
        pools: list[Pool] = []
        replicas: list[Replica] = []
        for pc in self.pools:
            known_as = pc.profile or pc.model
            offering = catalogue.offering(known_as, pc.accelerator, pc.capacity_class)
            if pc.price_per_hour is not None:
                offering = replace(offering, price_per_hour=pc.price_per_hour)
            profile = replace(catalogue.profile(known_as, pc.accelerator), model=pc.model)
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
