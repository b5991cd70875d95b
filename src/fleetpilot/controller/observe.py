"""The controller's link to the gateway, both ways: demand in, membership out.

**Demand.**  The gateway counts finished requests per model (``fleetpilot_requests_total``),
tokens per pool (``fleetpilot_tokens_total``) and requests in flight.  Between two readings
``dt`` apart, arrivals are the requests that finished plus the growth of those in flight, so
``rps = (Δfinished + Δin_flight) / dt``; mean prompt and output sizes are token deltas over
successful requests (kept from the last window when nothing finished).  A counter that went
down means the gateway restarted and counts from zero again.  :class:`FleetObserver` reads an
in-process gateway (its ``LiveFleet`` and ``GatewayMetrics``); :class:`MetricsObserver`
scrapes a gateway's ``/metrics`` over HTTP.  Both use the controller's clock, so on a scaled
clock rates are per *modelled* second.

**Membership.**  The gateway learns which replicas exist from the actuator:
:class:`FleetMembership` syncs an in-process ``LiveFleet`` (add, ``set_state``, remove);
:class:`HttpMembership` does the same against a gateway in another process through the admin
endpoints in :mod:`fleetpilot.gateway.membership` (``POST /admin/replicas``,
``POST /admin/replicas/remove``) and the gateway's own ``/admin/drain`` and ``/admin/undrain``.
Only replicas a membership added are ever removed by it; statically configured ones stay.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fleetpilot.clock import Clock
from fleetpilot.core.burstiness import EDGES, excess
from fleetpilot.core.model import Demand, Pool, Replica, ReplicaState
from fleetpilot.gateway.fleet import LiveFleet
from fleetpilot.gateway.metrics import GatewayMetrics

__all__ = [
    "DemandEstimator",
    "FleetMembership",
    "FleetObserver",
    "GatewayCounters",
    "HttpMembership",
    "Membership",
    "MetricsObserver",
    "Observer",
    "parse_counters",
]


class Observer(Protocol):
    async def demand(self) -> dict[str, Demand]:
        """Demand per model over the time since the previous call."""
        ...


class Membership(Protocol):
    async def sync(self, replicas: Sequence[Replica]) -> None:
        """Make the gateway's members match ``replicas`` (the actuator's view)."""
        ...


# ---------------------------------------------------------------------------------------------
# Demand


@dataclass(frozen=True, slots=True)
class GatewayCounters:
    """Cumulative counts per model at one instant (in-flight is a level, not a count)."""

    finished: dict[str, float] = field(default_factory=dict)
    ok: dict[str, float] = field(default_factory=dict)
    prompt_tokens: dict[str, float] = field(default_factory=dict)
    output_tokens: dict[str, float] = field(default_factory=dict)
    in_flight: dict[str, float] = field(default_factory=dict)
    # requests by 2-s bucket rate (core.burstiness.EDGES), cumulative, per model
    bursts: dict[str, list[float]] = field(default_factory=dict)


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


def parse_counters(
    text: str, pool_models: Mapping[str, str], in_flight: Mapping[str, float] | None = None
) -> GatewayCounters:
    """Read the gateway's Prometheus text.  ``pool_models`` maps pool -> model for the
    per-pool series; ``in_flight`` (per model) overrides the ``fleetpilot_in_flight`` gauge."""
    out = GatewayCounters()
    gauge: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "fleetpilot_requests_total":
                _add(out.finished, labels.get("model", ""), s.value)
                if labels.get("status") == "200":
                    _add(out.ok, labels.get("model", ""), s.value)
            elif s.name == "fleetpilot_tokens_total":
                model = pool_models.get(labels.get("pool", ""))
                if model is not None:
                    kind = labels.get("kind")
                    target = out.prompt_tokens if kind == "prompt" else out.output_tokens
                    _add(target, model, s.value)
            elif s.name == "fleetpilot_arrival_bursts_bucket" and labels.get("le") != "+Inf":
                _burst(out.bursts, labels.get("model", ""), float(labels["le"]), s.value)
            elif s.name == "fleetpilot_in_flight":
                model = pool_models.get(labels.get("pool", ""))
                if model is not None:
                    _add(gauge, model, s.value)
    out.in_flight.update(in_flight if in_flight is not None else gauge)
    out.bursts.update({m: _per_bin(c) for m, c in out.bursts.items()})
    return out


def _burst(out: dict[str, list[float]], model: str, le: float, running: float) -> None:
    """One bucket of the burst histogram, kept cumulative as Prometheus renders it (in
    order); :func:`_per_bin` turns each model's buckets into per-bin counts once read."""
    bins = out.setdefault(model, [])
    if len(bins) < len(EDGES) and math.isclose(EDGES[len(bins)], le, rel_tol=1e-9):
        bins.append(running)


def _per_bin(cumulative: list[float]) -> list[float]:
    return [c - (cumulative[i - 1] if i else 0.0) for i, c in enumerate(cumulative)]


def _delta(now: Mapping[str, float], before: Mapping[str, float], key: str) -> float:
    d = now.get(key, 0.0) - before.get(key, 0.0)
    return d if d >= 0 else now.get(key, 0.0)  # reset: the gateway counts from zero again


class DemandEstimator:
    """Turns successive :class:`GatewayCounters` into :class:`Demand` per model."""

    def __init__(
        self, clock: Clock, models: Iterable[str] = (), default: Demand | None = None
    ) -> None:
        self.clock = clock
        self.models = set(models)
        self.default = default or Demand()
        self._last: tuple[float, GatewayCounters] | None = None
        self._shape: dict[str, tuple[float, float]] = {}

    def update(self, counters: GatewayCounters) -> dict[str, Demand]:
        now = self.clock.now()
        models = self.models | set(counters.finished) | set(counters.in_flight)
        models.discard("")
        last, self._last = self._last, (now, counters)
        out: dict[str, Demand] = {}
        for m in sorted(models):
            in_flight = int(counters.in_flight.get(m, 0))
            if last is None or now <= last[0]:
                out[m] = Demand(0.0, *self._means(m), in_flight=in_flight)
                continue
            t0, c0 = last
            done = _delta(counters.finished, c0.finished, m)
            grew = counters.in_flight.get(m, 0.0) - c0.in_flight.get(m, 0.0)
            rps = max(done + grew, 0.0) / (now - t0)
            ok = _delta(counters.ok, c0.ok, m)
            if ok > 0:
                prompt = _delta(counters.prompt_tokens, c0.prompt_tokens, m) / ok
                output = _delta(counters.output_tokens, c0.output_tokens, m) / ok
                self._shape[m] = (prompt, output)
            burst = None
            if m in counters.bursts:
                was = c0.bursts.get(m, [])
                now_bins = counters.bursts[m]
                delta = [b - (was[i] if i < len(was) else 0.0) for i, b in enumerate(now_bins)]
                if min(delta, default=0.0) < 0:  # the gateway restarted: its counts began again
                    delta = list(now_bins)
                burst = excess(delta, sum(delta) / (now - t0))  # the rate the meter saw
            out[m] = Demand(rps, *self._means(m), in_flight=in_flight, burst_excess=burst)
        return out

    def _means(self, model: str) -> tuple[float, float]:
        d = self.default
        return self._shape.get(model, (d.mean_prompt_tokens, d.mean_output_tokens))


def _pool_models(pools: Iterable[Pool]) -> dict[str, str]:
    return {p.name: p.model for p in pools}


class FleetObserver:
    """Demand from a gateway running in this process."""

    def __init__(
        self, fleet: LiveFleet, metrics: GatewayMetrics, pools: Iterable[Pool], clock: Clock
    ) -> None:
        pools = list(pools)
        self.fleet = fleet
        self.metrics = metrics
        self.pool_models = _pool_models(pools)
        self.estimator = DemandEstimator(clock, self.pool_models.values())

    async def demand(self) -> dict[str, Demand]:
        in_flight: dict[str, float] = {}
        for r in self.fleet.replicas:
            _add(in_flight, r.base.model, r.in_flight)
        text = self.metrics.render().decode("utf-8", "replace")
        return self.estimator.update(parse_counters(text, self.pool_models, in_flight))


class MetricsObserver:
    """Demand scraped from a gateway's ``/metrics`` (``url`` is the gateway's base URL)."""

    def __init__(
        self,
        url: str,
        pools: Iterable[Pool],
        clock: Clock,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.pool_models = _pool_models(pools)
        self.estimator = DemandEstimator(clock, self.pool_models.values())
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def demand(self) -> dict[str, Demand]:
        session = self._session or aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with session.get(self.url + "/metrics", timeout=self._timeout) as resp:
                resp.raise_for_status()
                text = await resp.text()
        finally:
            if self._session is None:
                await session.close()
        return self.estimator.update(parse_counters(text, self.pool_models))


# ---------------------------------------------------------------------------------------------
# Membership


class FleetMembership:
    """Keeps an in-process gateway's ``LiveFleet`` in step with the actuator."""

    def __init__(self, fleet: LiveFleet) -> None:
        self.fleet = fleet
        self.managed: set[str] = set()

    async def sync(self, replicas: Sequence[Replica]) -> None:
        self.sync_now(replicas)

    def sync_now(self, replicas: Sequence[Replica]) -> None:
        """The same, synchronously (a LiveFleet lives on this event loop)."""
        fleet = self.fleet
        seen: set[str] = set()
        for r in replicas:
            if r.state is ReplicaState.GONE:
                continue
            seen.add(r.id)
            live = fleet.find(r.id)
            if live is None:
                fleet.add(r)
                self.managed.add(r.id)
            elif r.id in self.managed and live.state is not r.state:
                fleet.set_state(r.id, r.state)
        for rid in sorted(self.managed - seen):
            if fleet.find(rid) is not None:
                fleet.remove(rid)
            self.managed.discard(rid)


def replica_json(r: Replica) -> dict[str, Any]:
    """The body of ``POST /admin/replicas`` for ``r``."""
    return {
        "id": r.id,
        "pool": r.pool,
        "model": r.model,
        "url": r.url,
        "accelerator": r.offering.accelerator,
        "capacity_class": r.offering.capacity_class.value,
        "price_per_hour": r.offering.price_per_hour,
        "profile": r.profile.model,
        "state": r.state.value,
    }


class HttpMembership:
    """Keeps a gateway in another process in step, over its admin endpoints."""

    def __init__(
        self,
        gateway_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = gateway_url.rstrip("/")
        self.managed: dict[str, ReplicaState] = {}
        self._session = session
        self._headers = dict(headers or {})
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def sync(self, replicas: Sequence[Replica]) -> None:
        session = self._session or aiohttp.ClientSession(timeout=self._timeout)
        try:
            await self._sync(session, replicas)
        finally:
            if self._session is None:
                await session.close()

    async def _post(self, session: aiohttp.ClientSession, path: str, body: Any) -> int:
        async with session.post(
            self.url + path, json=body, headers=self._headers, timeout=self._timeout
        ) as resp:
            await resp.read()
            return resp.status

    async def _sync(self, session: aiohttp.ClientSession, replicas: Sequence[Replica]) -> None:
        async with session.get(
            self.url + "/admin/fleet", headers=self._headers, timeout=self._timeout
        ) as resp:
            resp.raise_for_status()
            present = {row["id"]: row["state"] for row in (await resp.json())["replicas"]}
        seen: set[str] = set()
        for r in replicas:
            if r.state is ReplicaState.GONE:
                continue
            seen.add(r.id)
            if r.id not in present:
                status = await self._post(session, "/admin/replicas", replica_json(r))
                if status >= 400 and status != 409:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=status, message="adding a replica failed"
                    )
                self.managed[r.id] = r.state
            elif r.id in self.managed and present[r.id] != r.state.value:
                if r.state is ReplicaState.DRAINING:
                    await self._post(session, "/admin/drain", {"replica": r.id})
                elif r.state is ReplicaState.READY:
                    await self._post(session, "/admin/undrain", {"replica": r.id})
                self.managed[r.id] = r.state
        for rid in sorted(set(self.managed) - seen):
            if rid in present:
                with contextlib.suppress(aiohttp.ClientError):
                    await self._post(session, "/admin/replicas/remove", {"replica": rid})
            del self.managed[rid]
