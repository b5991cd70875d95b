"""The ``VectorStore`` seam: documents, chunks, their vectors and a keyword index, together.

One store holds everything about a document, so a vector can never outlive the text it was
made from: replacing a document replaces its chunks, vectors and keyword rows in one
transaction.  Vectors live per embedding *model* (name and version); one model is
``active`` (searched), another may be ``building`` (being filled in the background by
:mod:`fleetpilot.rag.migrate`) until :meth:`VectorStore.activate` switches atomically.

Every read and write names a tenant, and implementations make the tenant part of the key
(sqlite-vec's partition key, a column in every Postgres index), so one tenant's query
cannot return another's chunk.  Implementations: :mod:`.sqlite` (embedded default) and
:mod:`.postgres`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fleetpilot.errors import ConfigError
from fleetpilot.rag.chunking import Chunk
from fleetpilot.rag.documents import Document

__all__ = [
    "Filters", "Hit", "ModelInfo", "Root", "Stats", "StoredDoc", "VectorStore", "open_store",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str  # model and version: what the vectors were made with
    spec: str  # how to build the embedder again (see fleetpilot.rag.embed)
    dim: int
    state: str  # "active" | "building"


@dataclass(frozen=True, slots=True)
class StoredDoc:
    id: str
    hash: str  # of the text and the chunker that cut it
    stamp: str  # the file's mtime and size when it was read ("" when not a file)
    root: str


@dataclass(frozen=True, slots=True)
class Root:
    """A directory (or file) ingested for a tenant, remembered for ``status`` and ``watch``."""

    path: str
    tenant: str
    chunker: str
    indexed_at: float


@dataclass(frozen=True, slots=True)
class Stats:
    documents: int
    chunks: int
    vectors: dict[str, int]  # model name -> vectors stored


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    doc_id: str
    text: str
    start: int
    end: int
    score: float
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


_FILTER_KEYS = ("doc_id", "source", "tag", "modified_after", "modified_before", "meta")


@dataclass(frozen=True, slots=True)
class Filters:
    """Metadata conditions, all of which a chunk's document must meet."""

    doc_ids: tuple[str, ...] = ()  # any of
    source_prefix: str | None = None
    tags: tuple[str, ...] = ()  # any of
    modified_after: float | None = None
    modified_before: float | None = None
    meta: tuple[tuple[str, Any], ...] = ()  # each key equals its value

    @property
    def empty(self) -> bool:
        return self == Filters()

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Filters:
        """From a request's JSON (``{"tag": "faq", "meta": {"lang": "en"}}``); ``ValueError``
        names what is wrong."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError("filters must be an object")
        unknown = set(raw) - set(_FILTER_KEYS)
        if unknown:
            raise ValueError(
                f"unknown filter {sorted(unknown)[0]!r}; use {', '.join(_FILTER_KEYS)}"
            )

        def strings(name: str) -> tuple[str, ...]:
            v = raw.get(name)
            if v is None:
                return ()
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or not v:
                raise ValueError(f"filter {name!r} must be a string or a non-empty list of them")
            return tuple(v)

        def time(name: str) -> float | None:
            v = raw.get(name)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"filter {name!r} must be seconds since the epoch")
            return float(v)

        meta = raw.get("meta") or {}
        if not isinstance(meta, dict) or not all(
            isinstance(v, str | int | float | bool) for v in meta.values()
        ):
            raise ValueError("filter 'meta' must map keys to strings, numbers or booleans")
        source = raw.get("source")
        if source is not None and not isinstance(source, str):
            raise ValueError("filter 'source' must be a string (a prefix)")
        return cls(
            doc_ids=strings("doc_id"),
            source_prefix=source,
            tags=strings("tag"),
            modified_after=time("modified_after"),
            modified_before=time("modified_before"),
            meta=tuple(sorted(meta.items())),
        )


class VectorStore(Protocol):
    # models
    def active_model(self) -> ModelInfo | None: ...
    def models(self) -> list[ModelInfo]: ...
    def add_model(self, name: str, spec: str, dim: int) -> ModelInfo: ...
    def activate(self, model: ModelInfo) -> None: ...

    # documents
    def documents(self, tenant: str, root: str | None = None) -> dict[str, StoredDoc]: ...
    def vectors_of(self, tenant: str, doc_id: str, model: ModelInfo) -> dict[str, np.ndarray]: ...
    def put_document(
        self,
        doc: Document,
        *,
        doc_hash: str,
        stamp: str,
        root: str,
        chunks: Sequence[Chunk],
        vectors: dict[int, np.ndarray],  # model id -> one row per chunk
    ) -> None: ...
    def touch(self, tenant: str, doc_id: str, stamp: str) -> None: ...
    def delete_documents(self, tenant: str, ids: Sequence[str]) -> int: ...
    def missing(
        self, model: ModelInfo, limit: int, after: int = 0
    ) -> list[tuple[int, str]]: ...  # chunks with no vector from ``model``, by id
    def count_missing(self, model: ModelInfo) -> int: ...
    def put_vectors(self, model: ModelInfo, ids: Sequence[int], vectors: np.ndarray) -> None: ...

    # search: (chunk id, score), best first; higher scores are better
    def vector_search(
        self, tenant: str, model: ModelInfo, vector: np.ndarray, k: int, filters: Filters
    ) -> list[tuple[int, float]]: ...
    def keyword_search(
        self, tenant: str, query: str, k: int, filters: Filters
    ) -> list[tuple[int, float]]: ...
    def chunks(self, tenant: str, ids: Sequence[int]) -> dict[int, Hit]: ...

    # bookkeeping
    def add_root(self, root: Root) -> None: ...
    def roots(self) -> list[Root]: ...
    def set_skipped(
        self, tenant: str, root: str, skipped: dict[str, tuple[str, str]]
    ) -> None: ...  # unreadable files: id -> (stamp, reason)
    def skipped(self, tenant: str, root: str) -> dict[str, tuple[str, str]]: ...
    def stats(self, tenant: str | None = None) -> Stats: ...
    def close(self) -> None: ...


def open_store(url: str, *, create: bool = True) -> VectorStore:
    """``sqlite:///path/to/file.db`` (or a bare path) or ``postgresql://…``.  With
    ``create=False`` (a reader: search, status, the gateway) a SQLite file that does not
    exist is a :class:`~fleetpilot.errors.ConfigError`, not a new empty store."""
    if url.startswith(("postgresql://", "postgres://")):
        from fleetpilot.rag.postgres import PostgresStore

        return PostgresStore(url)
    from fleetpilot.rag.sqlite import SqliteStore

    path = url.removeprefix("sqlite://")
    if not create and path != ":memory:" and not Path(path).exists():
        raise ConfigError(f"no RAG store at {path}: create one with `fleetpilot rag ingest`")
    return SqliteStore(path)
