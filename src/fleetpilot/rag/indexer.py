"""Keeping a store fresh: ingest, re-ingest, and say what is not indexed yet.

Freshness rests on two hashes.  A document's hash covers its text and the chunker that cut
it; a chunk's covers its text.  Re-ingesting a directory first compares each file's
``stat`` with what the store saw (so an unchanged tree is not even read), then the
document hash (a touched but unchanged file costs one read), then per chunk: a chunk whose
text the document already had keeps its vector, and only new chunk texts are embedded.
Files that disappeared are deleted with their chunks and vectors, in the same
transaction-per-document discipline the store keeps (LlamaIndex's upsert-and-delete and
LangChain's incremental clean-up work the same way).

A file that cannot be read is reported by name and skipped; if an earlier version of it is
indexed, that version keeps serving.  The store remembers it with its ``stat``, so it is
reported again (not re-read) until it changes, and :func:`pending` counts it apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleetpilot.errors import ConfigError, DocumentUnreadable
from fleetpilot.rag.chunking import Chunker
from fleetpilot.rag.documents import Document, FileEntry, content_hash, load_file, scan
from fleetpilot.rag.embed import Embedder, embed_all
from fleetpilot.rag.store import ModelInfo, Root, StoredDoc, VectorStore

__all__ = ["Indexer", "Pending", "Report", "pending"]


@dataclass(slots=True)
class Report:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks_embedded: int = 0  # distinct new chunk texts, sent to the embedder
    chunks_reused: int = 0  # chunks whose text the document already had: vector kept
    errors: list[DocumentUnreadable] = field(default_factory=list)
    seconds: float = 0.0


class Indexer:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        chunker: Chunker,
        *,
        tenant: str = "default",
    ) -> None:
        self.store, self.embedder, self.chunker, self.tenant = store, embedder, chunker, tenant
        self.model = self._model()

    def _model(self) -> ModelInfo:
        active = self.store.active_model()
        if active is None:
            return self.store.add_model(self.embedder.name, self.embedder.spec, self.embedder.dim)
        if active.name != self.embedder.name:
            raise ConfigError(
                f"this store's vectors are from {active.name}, not {self.embedder.name}: ingest "
                f"with --embedder {active.spec}, or move the store with `fleetpilot rag reembed`"
            )
        return active

    def ingest(
        self,
        root: Path,
        *,
        tags: tuple[str, ...] = (),
        progress: Callable[[int, int], None] | None = None,
    ) -> Report:
        """Bring the store in line with ``root`` (a directory or one file)."""
        t0 = time.perf_counter()
        report = Report()
        where = str(Path(root).resolve())
        stored = self.store.documents(self.tenant, where)
        # stat stamps vouch for a file only if it was cut by the same chunker
        last = next(
            (r for r in self.store.roots() if (r.path, r.tenant) == (where, self.tenant)), None
        )
        trust = last is not None and last.chunker == self.chunker.spec
        entries = list(scan(Path(root)))
        known_bad = self.store.skipped(self.tenant, where)
        bad: dict[str, tuple[str, str]] = {}
        for n, entry in enumerate(entries, 1):
            if known_bad.get(entry.id, ("",))[0] == entry.stamp:  # still the same bad file
                bad[entry.id] = known_bad[entry.id]
                report.errors.append(DocumentUnreadable(str(entry.path), bad[entry.id][1]))
            elif (err := self._file(entry, stored, where, tags, report, trust)) is not None:
                bad[entry.id] = (entry.stamp, err.reason)
            if progress is not None:
                progress(n, len(entries))
        if bad or known_bad:
            self.store.set_skipped(self.tenant, where, bad)
        seen = {e.id for e in entries}
        gone = [doc_id for doc_id in stored if doc_id not in seen]
        report.deleted = len(gone)
        self.store.delete_documents(self.tenant, gone)
        self.store.add_root(Root(where, self.tenant, self.chunker.spec, time.time()))
        report.seconds = time.perf_counter() - t0
        return report

    def _file(
        self,
        entry: FileEntry,
        stored: dict[str, StoredDoc],
        root: str,
        tags: tuple[str, ...],
        report: Report,
        trust: bool,
    ) -> DocumentUnreadable | None:
        old = stored.get(entry.id)
        if trust and old is not None and old.stamp == entry.stamp:
            report.unchanged += 1
            return None
        try:
            doc = load_file(entry.path, doc_id=entry.id, tenant=self.tenant, tags=tags)
        except DocumentUnreadable as exc:
            report.errors.append(exc)
            return exc
        self._put(doc, entry.stamp, root, old.hash if old else None, report)
        return None

    def add(self, docs: Iterable[Document], *, root: str = "") -> Report:
        """Documents given directly (an API, a crawler): upserted by id, nothing deleted."""
        t0 = time.perf_counter()
        report = Report()
        ids = self.store.documents(self.tenant)
        for doc in docs:
            if doc.tenant != self.tenant:
                raise ValueError(f"document {doc.id!r} is for tenant {doc.tenant!r}")
            old = ids.get(doc.id)
            self._put(doc, "", root or doc.source, old.hash if old else None, report)
        report.seconds = time.perf_counter() - t0
        return report

    def _put(
        self, doc: Document, stamp: str, root: str, old_hash: str | None, report: Report
    ) -> None:
        doc_hash = content_hash(doc.hash + "\x00" + self.chunker.spec)
        if old_hash == doc_hash:
            self.store.touch(self.tenant, doc.id, stamp)
            report.unchanged += 1
            return
        chunks = self.chunker(doc.text)
        known = self.store.vectors_of(self.tenant, doc.id, self.model) if old_hash else {}
        report.chunks_reused += sum(1 for c in chunks if c.hash in known)
        fresh = list(dict.fromkeys(c.text for c in chunks if c.hash not in known))
        if fresh:
            made = embed_all(self.embedder, fresh)  # batches: an endpoint caps its inputs
            known.update({content_hash(t): made[i] for i, t in enumerate(fresh)})
        report.chunks_embedded += len(fresh)
        rows = np.array([known[c.hash] for c in chunks], np.float32)
        rows = rows.reshape(len(chunks), self.embedder.dim)
        self.store.put_document(
            doc, doc_hash=doc_hash, stamp=stamp, root=root, chunks=chunks,
            vectors={self.model.id: rows},
        )  # fmt: skip
        if old_hash:
            report.changed += 1
        else:
            report.added += 1


@dataclass(frozen=True, slots=True)
class Pending:
    changed: int  # files new or modified since they were indexed
    unreadable: int  # files skipped as unreadable, unchanged since
    deleted: int  # indexed documents whose file is gone
    oldest_s: float  # age of the oldest un-indexed change (0 when none)
    vectors: int  # chunks a building model has no vector for yet


def pending(store: VectorStore, *, now: float | None = None) -> Pending:
    """What the store's roots hold that it has not indexed, found by ``stat`` alone."""
    now = time.time() if now is None else now
    changed = deleted = unreadable = 0
    oldest = now
    for root in store.roots():
        stored = store.documents(root.tenant, root.path)
        bad = store.skipped(root.tenant, root.path)
        path = Path(root.path)
        entries = {e.id: e for e in scan(path)} if path.exists() else {}
        for doc_id, entry in entries.items():
            old = stored.get(doc_id)
            if bad.get(doc_id, ("",))[0] == entry.stamp:
                unreadable += 1
            elif old is None or old.stamp != entry.stamp:
                changed += 1
                oldest = min(oldest, entry.mtime_ns / 1e9)
        gone = [d for d in stored if d not in entries]
        if gone:
            deleted += len(gone)
            oldest = min(oldest, root.indexed_at)
    building = [m for m in store.models() if m.state == "building"]
    vectors = sum(store.count_missing(m) for m in building)
    age = max(0.0, now - oldest) if changed or deleted else 0.0
    return Pending(changed, unreadable, deleted, age, vectors)
