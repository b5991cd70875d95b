"""Typed keys under which the gateway app holds its parts (shared by its HTTP modules)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fleetpilot.config import FleetConfig
from fleetpilot.gateway.auth import AdminAuth
from fleetpilot.gateway.fleet import LiveFleet
from fleetpilot.gateway.metrics import GatewayMetrics
from fleetpilot.gateway.pipeline import Handler
from fleetpilot.gateway.stages.upstream import Proxy

FLEET: web.AppKey[LiveFleet] = web.AppKey("fleet", LiveFleet)
PROXY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
CONFIG: web.AppKey[FleetConfig] = web.AppKey("config", FleetConfig)
ADMIN: web.AppKey[AdminAuth] = web.AppKey("admin", AdminAuth)
PIPELINE: web.AppKey[Handler] = web.AppKey("pipeline")
TENANCY: web.AppKey[Any] = web.AppKey("tenancy")  # gateway.server.Tenancy, when a store is on
RETRIEVAL: web.AppKey[Any] = web.AppKey("retrieval")  # stages.retrieval.Retrieval, when on
