"""The controller as a service: settings (YAML, validated once) wired into a running loop.

This is what ``fleetpilot controller --config controller.yaml`` runs (and what the Helm chart
in ``deploy/`` starts): it reads demand from a gateway over HTTP, keeps that gateway's
membership in step (the gateway must expose :mod:`fleetpilot.gateway.membership`'s endpoints),
and drives the chosen actuator until SIGTERM or SIGINT.  Example::

    policy: adaptive
    interval_s: 10
    gateway_url: http://fleetpilot-gateway:8080
    models: [llama-3.1-8b]
    classes: [on_demand, spot]
    actuator: kubernetes            # local | kubernetes | dry-run
    kubernetes: {namespace: serving, image: vllm/vllm-openai:latest}
    store: {url: redis://redis:6379/0}  # shared with the gateways; holds the leader lease
    lease: {ttl_s: 30}
    plan: {ttft_slo_s: 2.0, spend_cap_per_hour: 400, knobs: {surge_min: 2.0}}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from fleetpilot.catalogue import load_catalogue
from fleetpilot.clock import SystemClock
from fleetpilot.config import StoreConfig, load_yaml_model
from fleetpilot.controller.actuators.base import Actuator
from fleetpilot.controller.actuators.dry_run import DryRunActuator
from fleetpilot.controller.actuators.kubernetes import (
    KubeClient,
    KubeConfig,
    KubeOptions,
    KubernetesActuator,
)
from fleetpilot.controller.actuators.local import LocalActuator, SpotPlay
from fleetpilot.controller.lease import InProcessLease, Lease, RedisLease, StoreLease
from fleetpilot.controller.loop import Controller, capacity_policy
from fleetpilot.controller.observe import HttpMembership, MetricsObserver
from fleetpilot.core.capacity import PlanParams, check_knobs
from fleetpilot.core.model import CapacityClass, Pool
from fleetpilot.errors import ConfigError
from fleetpilot.gateway.auth import ADMIN_ENV, admin_token

__all__ = ["ControllerSettings", "load_controller_settings", "run_controller", "serve_controller"]

log = logging.getLogger("fleetpilot.controller")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KubernetesSettings(_Frozen):
    namespace: str | None = None
    image: str = "vllm/vllm-openai:latest"
    port: int = Field(default=8000, ge=1, le=65535)
    selector: Literal["instance-type", "gpu-product"] = "instance-type"
    kubeconfig: Path | None = None
    context: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    service_account: str | None = None
    drain_timeout_s: float = Field(default=300.0, gt=0)
    # spot pools over zones: minDomains = zones in their zone spread (see the actuator)
    zone_min_domains: bool = True


class LeaseSettings(_Frozen):
    redis_url: str | None = None
    key: str = "fleetpilot/controller"
    ttl_s: float | None = Field(default=None, gt=0)


class SpotSettings(_Frozen):
    notice_s: float = Field(default=120.0, ge=0)
    rate_per_hour: float | None = Field(default=None, ge=0)
    seed: int = 0


class PlanSettings(_Frozen):
    ttft_slo_s: float = Field(default=2.0, gt=0)
    itl_slo_s: float = Field(default=0.2, gt=0)
    utilisation: float = Field(default=0.8, gt=0, le=1)
    safety: float = Field(default=1.2, ge=1)
    spend_cap_per_hour: float = Field(default=float("inf"), gt=0)
    min_replicas: int = Field(default=1, ge=0)
    # the policies' knobs by name (fleetpilot.core.knobs), e.g. surge_min: 1.8
    knobs: dict[str, float] = Field(default_factory=dict)

    @field_validator("knobs")
    @classmethod
    def _known(cls, knobs: dict[str, float]) -> dict[str, float]:
        check_knobs(knobs)
        return knobs

    def params(self) -> PlanParams:
        fields = self.model_dump(exclude={"knobs"})
        return PlanParams(**fields).with_knobs(self.knobs)


class ControllerSettings(_Frozen):
    policy: str = "adaptive"
    interval_s: float = Field(default=10.0, gt=0)
    time_scale: float = Field(default=1.0, gt=0)
    gateway_url: str
    gateway_admin_token: SecretStr | None = Field(
        default=None, description=f"the gateway's admin credential (else ${ADMIN_ENV})"
    )
    catalogue: Path | None = None
    models: list[str] = Field(min_length=1)
    accelerators: list[str] | None = None
    classes: list[CapacityClass] = Field(
        default_factory=lambda: [CapacityClass.ON_DEMAND, CapacityClass.SPOT]
    )
    actuator: Literal["local", "kubernetes", "dry-run"] = "dry-run"
    kubernetes: KubernetesSettings = KubernetesSettings()
    spot: SpotSettings | None = None
    store: StoreConfig | None = Field(
        default=None, description="the shared store (the gateway's store: setting); holds the lease"
    )
    lease: LeaseSettings = LeaseSettings()
    plan: PlanSettings = PlanSettings()


def load_controller_settings(path: Path | str) -> ControllerSettings:
    return load_yaml_model(path, ControllerSettings, "controller settings")


def _pools(settings: ControllerSettings) -> list[Pool]:
    catalogue = load_catalogue(settings.catalogue)
    pools: list[Pool] = []
    for model in settings.models:
        pools += catalogue.pools(model, settings.accelerators, tuple(settings.classes))
    if not pools:
        raise ConfigError("no pool: the catalogue prices none of these models and classes")
    return pools


def _actuator(settings: ControllerSettings, clock: SystemClock) -> Actuator:
    if settings.actuator == "local":
        spot = None
        if settings.spot is not None:
            s = settings.spot
            spot = SpotPlay(notice_s=s.notice_s, rate_per_hour=s.rate_per_hour, seed=s.seed)
        return LocalActuator(clock, catalogue=settings.catalogue, spot=spot)
    if settings.actuator == "kubernetes":
        k = settings.kubernetes
        if k.kubeconfig is not None or k.context is not None:
            config = KubeConfig.from_kubeconfig(k.kubeconfig, k.context)
        else:
            config = KubeConfig.in_cluster()
        options = KubeOptions(
            namespace=k.namespace or config.namespace,
            image=k.image,
            port=k.port,
            selector=k.selector,
            extra_args=tuple(k.extra_args),
            env=dict(k.env),
            service_account=k.service_account,
            drain_timeout_s=k.drain_timeout_s,
            zone_min_domains=k.zone_min_domains,
        )
        return KubernetesActuator(KubeClient(config), clock, options)
    return DryRunActuator(clock)


def admin_headers(settings: ControllerSettings) -> dict[str, str]:
    """The header that carries the gateway's admin credential, when there is one."""
    value = admin_token(settings.gateway_admin_token)
    return {"Authorization": f"Bearer {value}"} if value else {}


def _lease(settings: ControllerSettings, clock: SystemClock) -> Lease:
    ttl = settings.lease.ttl_s or 3 * settings.interval_s
    if settings.store is not None:
        from fleetpilot.store import open_store

        store = open_store(settings.store.url)
        return StoreLease(store, clock, key=settings.lease.key, ttl_s=ttl)
    if settings.lease.redis_url:  # the older spelling of store: {url: redis://…}
        return RedisLease.from_url(
            settings.lease.redis_url, clock, key=settings.lease.key, ttl_s=ttl
        )
    return InProcessLease(clock, key=settings.lease.key, ttl_s=ttl)


async def serve_controller(
    settings: ControllerSettings, *, stop: asyncio.Event | None = None
) -> None:
    """Run until SIGTERM or SIGINT (or until ``stop`` is set, when given); the lease is
    released and the actuator closed on the way out."""
    clock = SystemClock(settings.time_scale)
    pools = _pools(settings)
    policy = capacity_policy(settings.policy)
    params = settings.plan.params()
    actuator = _actuator(settings, clock)
    lease = _lease(settings, clock)
    controller = Controller(
        policy,
        params,
        actuator,
        MetricsObserver(settings.gateway_url, pools, clock),
        clock,
        lease,
        settings.interval_s,
        pools=pools,
        membership=HttpMembership(settings.gateway_url, headers=admin_headers(settings)),
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with controller:
            log.warning("controller running: %d pools, policy %s", len(pools), settings.policy)
            await stop.wait()
    finally:
        await actuator.close()
        close = getattr(lease, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


def run_controller(path: Path | str) -> None:
    """The ``fleetpilot controller --config FILE`` command (raises ``ConfigError`` early)."""
    settings = load_controller_settings(path)
    _pools(settings)
    capacity_policy(settings.policy)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve_controller(settings))
