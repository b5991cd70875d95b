"""How fresh an index is, as Prometheus gauges (``rag watch --metrics-port``, ``rag status
--prometheus``, and the gateway's ``/metrics`` when retrieval is on)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from fleetpilot.rag.indexer import pending
from fleetpilot.rag.store import VectorStore

__all__ = ["RagMetrics"]


class RagMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"fleetpilot_rag_{name}", doc, registry=registry)

        self.documents = gauge("documents", "Documents in the index")
        self.chunks = gauge("chunks", "Chunks in the index")
        self.pending = gauge("pending_changes", "Files changed, added or deleted, not indexed")
        self.oldest = gauge("oldest_pending_seconds", "Age of the oldest un-indexed change")
        self.vectors = gauge("vectors_pending", "Chunks a model being built has no vector for")

    def update(self, store: VectorStore) -> None:
        stats, p = store.stats(), pending(store)
        self.documents.set(stats.documents)
        self.chunks.set(stats.chunks)
        self.pending.set(p.changed + p.deleted)
        self.oldest.set(p.oldest_s)
        self.vectors.set(p.vectors)
