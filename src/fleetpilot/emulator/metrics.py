"""The replica's Prometheus metrics, under vLLM's names so one scraper reads both.

Gauges are read from the batch engine at scrape time; counters and histograms are updated as
requests run.  Every emulator has its own registry (no process globals), so several can
live in one process.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetpilot.emulator.engine import EmulatedReplica

__all__ = ["CONTENT_TYPE", "ReplicaMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0)


class _LoadCollector(Collector):
    def __init__(self, replica: EmulatedReplica, model: str) -> None:
        self._replica = replica
        self._model = model

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["model_name"])
        g.add_metric([self._model], value)
        return g

    def collect(self) -> Iterator[Metric]:
        load = self._replica.load()
        used = load.running / self._replica.profile.max_batch
        yield self._gauge(
            "vllm:num_requests_running", "Sequences in the running batch.", load.running
        )
        yield self._gauge(
            "vllm:num_requests_waiting", "Sequences waiting for a KV slot.", load.waiting
        )
        yield self._gauge("vllm:gpu_cache_usage_perc", "KV cache usage (1 = full).", used)
        yield self._gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = full).", used)


class ReplicaMetrics:
    """What ``GET /metrics`` exposes for one emulated replica."""

    def __init__(self, replica: EmulatedReplica, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_LoadCollector(replica, model))
        labels = ["model_name"]
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefilled prompt tokens.", labels, registry=self.registry
        ).labels(model)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", labels, registry=self.registry
        ).labels(model)
        self._success = Counter(
            "vllm:request_success",
            "Finished requests.",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token, real seconds.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        ).labels(model)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Request latency, real seconds.",
            labels,
            buckets=_E2E_BUCKETS,
            registry=self.registry,
        ).labels(model)

    def finished(self, reason: str = "length") -> None:
        self._success.labels(self.model, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
