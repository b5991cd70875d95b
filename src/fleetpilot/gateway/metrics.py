"""The gateway's Prometheus metrics, on a registry of its own (no process globals).

Label values come only from configuration (model and pool names) and a fixed set of status
codes, never from what a client sends, so the series count stays bounded whatever the
traffic.  Cost is in dollars: ``fleetpilot_cost_dollars_total`` is replica time attributed to
requests (see :mod:`fleetpilot.gateway.fleet`), ``fleetpilot_idle_cost_dollars`` the ready time
nobody used; with ``fleetpilot_tokens_total`` they give $ per token per pool.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from fleetpilot.core.burstiness import EDGES

__all__ = ["EventHistogram", "GatewayMetrics"]

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_COST = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class _EventSeries:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class EventHistogram(Collector):
    """A Prometheus histogram for what happens once per streamed event (the gap between two
    tokens).  prometheus_client's Histogram takes a lock and walks its buckets in Python on
    every observation, a visible share of a relayed event's CPU; this one bisects into a
    plain list (the gateway observes from one event-loop thread) and is rendered like any
    histogram."""

    def __init__(
        self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...], registry: Any
    ) -> None:
        self.name, self.doc, self.label_names, self.bounds = name, doc, labels, buckets
        self._series: dict[tuple[str, ...], _EventSeries] = {}
        registry.register(self)

    def labels(self, *values: str) -> _EventSeries:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _EventSeries(self.bounds)
        return series

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.label_names)
        for values, s in list(self._series.items()):
            running, buckets = 0, []
            for bound, n in zip((*self.bounds, float("inf")), s.counts, strict=True):
                running += n
                buckets.append((_le(bound), running))
            family.add_metric(list(values), buckets, s.total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.doc, labels=self.label_names)


class _Bursts(Collector):
    """``fleetpilot_arrival_bursts``: requests by the rate of the 2-s bucket they arrived in
    (core.burstiness), a histogram the controller differences between scrapes."""

    NAME = "fleetpilot_arrival_bursts"

    def __init__(self, source: Callable[[], dict[str, list[int]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            self.NAME,
            "Requests by the arrival rate (req/s) of the 2 s they came in",
            labels=["model"],
        )
        for model, counts in sorted(self.source().items()):
            running, buckets = 0, []
            for edge, n in zip(EDGES, counts, strict=True):
                running += n
                buckets.append((_le(edge), running))
            buckets.append(("+Inf", running))
            family.add_metric([model], buckets, 0.0)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.NAME, "", labels=["model"])


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


@dataclass(frozen=True, slots=True)
class ServedSeries:
    ok: Any
    cost: Any
    request_cost: Any
    e2e: Any
    ttft: Any
    itl: Any
    prompt_tokens: Any
    completion_tokens: Any


class GatewayMetrics:
    def __init__(
        self,
        idle_costs: Callable[[], dict[str, float]] | None = None,
        corrections: Callable[[], dict[str, Any]] | None = None,
        bursts: Callable[[], dict[str, list[int]]] | None = None,
    ) -> None:
        self._served: dict[tuple[str, str], ServedSeries] = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fleetpilot_requests", "Requests by outcome", ["model", "pool", "status"], registry=r
        )
        self.ttft = Histogram(
            "fleetpilot_ttft_seconds",
            "Time to first token",
            ["model", "pool"],
            buckets=_LATENCY,
            registry=r,
        )
        self.itl = EventHistogram(
            "fleetpilot_inter_token_seconds",
            "Gap between streamed chunks",
            ["model", "pool"],
            buckets=_ITL,
            registry=r,
        )
        self.e2e = Histogram(
            "fleetpilot_e2e_seconds",
            "End-to-end latency",
            ["model", "pool"],
            buckets=_LATENCY,
            registry=r,
        )
        self.in_flight = Gauge("fleetpilot_in_flight", "Requests in flight", ["pool"], registry=r)
        self.headroom = Gauge(
            "fleetpilot_router_headroom",
            "Share of a TTFT budget the router fills, learnt from first tokens",
            ["model"],
            registry=r,
        )
        self.retries = Counter(
            "fleetpilot_retries", "Attempts moved to another replica", ["model"], registry=r
        )
        self.continuations = Counter(
            "fleetpilot_continuations",
            "Streams resumed on another replica",
            ["model"],
            registry=r,
        )
        self.shed = Counter("fleetpilot_shed", "Requests shed (429)", ["model"], registry=r)
        self.cost = Counter(
            "fleetpilot_cost_dollars",
            "Replica time attributed to requests, $",
            ["pool"],
            registry=r,
        )
        self.request_cost = Histogram(
            "fleetpilot_request_cost_dollars",
            "Attributed $ per request",
            ["pool"],
            buckets=_COST,
            registry=r,
        )
        self.tokens = Counter("fleetpilot_tokens", "Tokens served", ["pool", "kind"], registry=r)
        if idle_costs is not None:
            idle = Gauge(
                "fleetpilot_idle_cost_dollars",
                "Ready replica time with nothing in flight, $",
                ["pool"],
                registry=r,
            )
            self._idle_costs = idle_costs
            self._idle = idle
        self._corrections = corrections
        if bursts is not None:
            r.register(_Bursts(bursts))
        self.correction = Gauge(
            "fleetpilot_replica_correction",
            "Observed over predicted time, learnt per replica (prefill: first token; step: "
            "per output token); 1 = its profile predicts it",
            ["replica", "kind"],
            registry=r,
        )

    def served(self, model: str, pool: str) -> ServedSeries:
        """The series a served request touches, looked up once per (model, pool): label
        lookups are a measurable share of the gateway's per-request CPU."""
        key = (model, pool)
        series = self._served.get(key)
        if series is None:
            series = self._served[key] = ServedSeries(
                ok=self.requests.labels(model, pool, "200"),
                cost=self.cost.labels(pool),
                request_cost=self.request_cost.labels(pool),
                e2e=self.e2e.labels(model, pool),
                ttft=self.ttft.labels(model, pool),
                itl=self.itl.labels(model, pool),
                prompt_tokens=self.tokens.labels(pool, "prompt"),
                completion_tokens=self.tokens.labels(pool, "completion"),
            )
        return series

    def render(self) -> bytes:
        if hasattr(self, "_idle"):
            for pool, dollars in self._idle_costs().items():
                self._idle.labels(pool).set(dollars)
        if self._corrections is not None:
            for rid, c in self._corrections().items():
                self.correction.labels(rid, "prefill").set(c.prefill)
                self.correction.labels(rid, "step").set(c.step)
        return generate_latest(self.registry)
