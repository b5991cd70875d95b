"""Answering a query from a store: vector, keyword or hybrid, within one tenant.

The query is embedded with the store's *active* model, read at each search, so a model
switch (:mod:`fleetpilot.rag.migrate`) takes effect at once and query and chunk vectors
always come from the same model.  Hybrid fuses the top ``depth`` of each method by
reciprocal rank; its default weights were chosen on half of Cranfield's queries and are
reported on the other half (``bench/rag_quality.py``).  Both halves rank exactly within
their method: keyword search is BM25 over every chunk holding a query word
(:mod:`fleetpilot.rag.bm25`), never a pruned approximation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fleetpilot.errors import ConfigError
from fleetpilot.rag.embed import Embedder, embedder
from fleetpilot.rag.fusion import RRF_K, rrf
from fleetpilot.rag.store import Filters, Hit, VectorStore

__all__ = ["MODES", "Retriever", "Weights"]

MODES = ("hybrid", "vector", "keyword")
_NO_FILTERS = Filters()


@dataclass(frozen=True, slots=True)
class Weights:
    vector: float = 1.0
    keyword: float = 1.0


class Retriever:
    def __init__(
        self,
        store: VectorStore,
        *,
        weights: Weights = Weights(),
        depth: int = 100,
        rrf_k: int = RRF_K,
        embedders: dict[str, Embedder] | None = None,
    ) -> None:
        self.store, self.weights, self.depth, self.rrf_k = store, weights, depth, rrf_k
        self._embedders = dict(embedders or {})  # by model name

    def embedder_for(self, name: str, spec: str) -> Embedder:
        found = self._embedders.get(name)
        if found is None:
            found = embedder(spec)
            if found.name != name:
                raise ConfigError(
                    f"the store's vectors are from {name}, but {spec!r} now gives {found.name}"
                )
            self._embedders[name] = found
        return found

    def search(
        self,
        query: str,
        *,
        tenant: str,
        k: int = 10,
        mode: str = "hybrid",
        filters: Filters = _NO_FILTERS,
        weights: Weights | None = None,
    ) -> list[Hit]:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if k < 1:
            raise ValueError("k must be at least 1")
        w = weights or self.weights
        ranked: list[tuple[int, float]]
        if mode == "keyword":
            ranked = self.store.keyword_search(tenant, query, k, filters)
        else:
            model = self.store.active_model()
            if model is None:
                return []  # nothing indexed yet
            vector = self.embedder_for(model.name, model.spec).query(query)
            depth = k if mode == "vector" else max(self.depth, k)
            near = self.store.vector_search(tenant, model, vector, depth, filters)
            if mode == "vector":
                ranked = near
            else:
                words = self.store.keyword_search(tenant, query, depth, filters)
                ranked = rrf(
                    [[i for i, _ in near], [i for i, _ in words]],
                    [w.vector, w.keyword],
                    k=self.rrf_k,
                )[:k]
        rows = self.store.chunks(tenant, [i for i, _ in ranked])
        return [replace(rows[i], score=s) for i, s in ranked if i in rows]
