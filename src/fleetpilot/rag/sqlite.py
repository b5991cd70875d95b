"""The embedded store: one SQLite file with documents, chunks, a BM25 index and sqlite-vec.

Why these pieces:

- **apsw**, not the stdlib ``sqlite3``: many Pythons (this machine's, macOS's) build
  ``sqlite3`` without extension loading, and sqlite-vec is an extension.  apsw bundles a
  current SQLite with FTS5 and loads it.
- **Keyword search** is :mod:`fleetpilot.rag.bm25`'s index in ``kw_*`` tables, cut by FTS5's
  own Porter tokenizer.  FTS5's table is not used: its ``bm25()`` scores each matching row
  in turn, which at 100,000 chunks missed the latency target on its own.  A store written
  before the change has its chunks indexed once when it is opened.
- **sqlite-vec ``vec0`` with the tenant as partition key**: a query scans only its tenant's
  vectors, so isolation is in the index's key, not a filter applied after.  ``vec0`` is
  exact brute force, and up to ``exact_limit`` vectors a tenant is searched that way.  Past
  it, a coarse pass ranks the tenant's *bit signatures* (:func:`signature`: 64 bytes a
  chunk at 256 dimensions, read once per change of the database and kept as one numpy
  matrix) by Hamming distance, and the ``coarse`` nearest are re-ranked exactly.  The
  signatures and a copy of each float vector sit in a plain table keyed by chunk id,
  because re-ranking looks vectors up one by one, which vec0 does slowly (it reads a
  storage chunk per lookup); vec0's own bit search was not used because its cost grows
  with the number of candidates asked for.
  ``bench/rag_latency.py`` measures both paths and the recall the coarse one keeps.
- A **metadata filter** first counts what it allows: a few rows are ranked exactly one by
  one; otherwise the search over-fetches and filters, widening until ``k`` pass or the
  whole tenant was looked at, so a selective filter never returns too few silently.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import sqlite_vec

from fleetpilot.rag.bm25 import KeywordIndex, schema
from fleetpilot.rag.chunking import Chunk
from fleetpilot.rag.documents import Document
from fleetpilot.rag.store import Filters, Hit, ModelInfo, Root, Stats, StoredDoc

__all__ = ["SqliteStore"]

_VEC_CHUNK = 64  # vectors per vec0 storage chunk: a point lookup reads one chunk

_SCHEMA = """
create table if not exists models(
  id integer primary key, name text not null unique, spec text not null, dim integer not null,
  state text not null, changed real not null);
create table if not exists documents(
  tenant text not null, id text not null, root text not null, source text not null,
  hash text not null, stamp text not null, modified real not null, tags text not null,
  meta text not null, indexed_at real not null, primary key (tenant, id)) without rowid;
create table if not exists chunks(
  id integer primary key, tenant text not null, doc_id text not null, ord integer not null,
  start integer not null, "end" integer not null, tokens integer not null, hash text not null,
  text text not null);
create index if not exists chunks_doc on chunks(tenant, doc_id);
create table if not exists skipped(
  tenant text not null, root text not null, id text not null, stamp text not null,
  reason text not null, primary key (tenant, root, id)) without rowid;
create table if not exists roots(
  path text not null, tenant text not null, chunker text not null, indexed_at real not null,
  primary key (path, tenant));
drop table if exists fts_vocab;
drop table if exists fts;
""" + schema("kw_", keyed=" without rowid")

_META_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


_HYPERPLANE_SEED = 20261201  # never change: stored signatures depend on it


@functools.cache
def _hyperplanes(dim: int) -> np.ndarray:
    return (
        np.random.default_rng(_HYPERPLANE_SEED).standard_normal((2 * dim, dim)).astype(np.float32)
    )


def signature(v: np.ndarray) -> np.ndarray:
    """A vector's side of ``2 * dim`` fixed random hyperplanes, one bit each (SimHash): the
    Hamming distance of two signatures estimates their angle.  Twice the dimensions as bits,
    because the plain signs of the coordinates kept visibly less recall at the same number
    of candidates (``bench/rag_latency.py``; figures in its README)."""
    bits = np.packbits(_hyperplanes(len(v)) @ np.asarray(v, np.float32) > 0, bitorder="little")
    pad = (-len(bits)) % 8  # whole 64-bit words, for the popcount over uint64
    return np.concatenate([bits, np.zeros(pad, np.uint8)]) if pad else bits


class SqliteStore:
    exact_limit = 20_000  # vectors in a tenant up to which vector search is exact
    # Candidates the bit scan takes for exact re-ranking: the smallest that keeps recall@10
    # at 0.95 on Chroma's questions, reported on Cranfield's (bench/rag_latency.py).
    coarse = 256
    few = 1024  # a filter that allows this many chunks or fewer is ranked row by row
    retire_grace_s = 30.0  # a replaced model's tables are kept this long for searches under way

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = apsw.Connection(self.path)
        self._db.set_busy_timeout(30_000)
        self._db.enable_load_extension(True)
        self._db.load_extension(sqlite_vec.loadable_path())
        self._db.enable_load_extension(False)
        self._lock = threading.RLock()  # one connection, used by one thread at a time
        self._wal()
        self._kw = KeywordIndex("kw_")
        self._sql = _Sql(self._db)
        with self._write():
            self._db.execute(_SCHEMA)
            self._kw.fill(self._sql, "chunks")
        self._counts: dict[str, tuple[tuple[int, int], int]] = {}  # tenant -> (version, n)
        self._bit_cache: dict[tuple[str, int], tuple[tuple[int, int], np.ndarray, np.ndarray]] = {}

    # -- plumbing ------------------------------------------------------------------------

    def _wal(self) -> None:
        """Switch the file to WAL.  Changing the journal mode needs the file to itself and
        SQLite does not wait for it (the busy handler is not called), so two processes
        opening a new store at once would fail here: retry instead, up to the busy
        timeout."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._db.execute("pragma journal_mode=wal; pragma synchronous=normal")
                return
            except apsw.BusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, taken at once (``immediate``), so two writers queue at its
        start instead of one failing half-way."""
        with self._lock:
            self._db.execute("begin immediate")
            try:
                yield
            except BaseException:
                self._db.execute("rollback")
                raise
            self._db.execute("commit")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))

    def _rows_locked(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._db.execute(sql, args))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- models --------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        rows = self._rows("select id, name, spec, dim, state from models order by id")
        return [ModelInfo(*r) for r in rows]

    def active_model(self) -> ModelInfo | None:
        return next((m for m in self.models() if m.state == "active"), None)

    def add_model(self, name: str, spec: str, dim: int) -> ModelInfo:
        """A new model's tables: active at once in an empty store, otherwise ``building``."""
        with self._write():
            self._drop_retired()
            found = list(self._db.execute("select id, state from models where name = ?", (name,)))
            if found:
                mid, state = found[0]
                if state == "retired":  # its vectors are still right: deletions reached them
                    self._db.execute(
                        "update models set state = 'building', changed = ? where id = ?",
                        (time.time(), mid),
                    )
            else:
                active = list(self._db.execute("select 1 from models where state = 'active'"))
                state = "building" if active else "active"
                self._db.execute(
                    "insert into models(name, spec, dim, state, changed) values (?,?,?,?,?)",
                    (name, spec, dim, state, time.time()),
                )
                mid = self._db.last_insert_rowid()
                self._db.execute(
                    f"create virtual table vec_{mid} using vec0(chunk_id integer primary key,"
                    f" tenant text partition key, emb float[{dim}] distance_metric=cosine,"
                    f" chunk_size={_VEC_CHUNK});"
                    f"create table bit_{mid}(chunk_id integer primary key, tenant text not null,"
                    f" bits blob not null, emb blob not null);"
                    f"create index bit_{mid}_tenant on bit_{mid}(tenant)"
                )
        return next(m for m in self.models() if m.id == mid)

    def activate(self, model: ModelInfo) -> None:
        """Serve ``model`` from now on and drop the one it replaces, in one transaction that
        first checks every chunk has its vector (``ValueError`` if not: catch up first)."""
        with self._write():
            (n,) = next(self._db.execute(self._missing_sql(model, count=True)))
            if n and model.state != "active":
                raise ValueError(f"{n} chunks have no vector from {model.name} yet")
            self._db.execute(
                "update models set state = 'retired', changed = ? where state = 'active'",
                (time.time(),),
            )
            self._db.execute(
                "update models set state = 'active', changed = ? where id = ?",
                (time.time(), model.id),
            )
            self._drop_retired()

    def _drop_retired(self) -> None:
        """Drop the tables of models retired over ``retire_grace_s`` ago.  Not at once: a
        search that read the old model just before the switch must still find its tables."""
        cutoff = time.time() - self.retire_grace_s
        old = list(
            self._db.execute(
                "select id from models where state = 'retired' and changed < ?", (cutoff,)
            )
        )
        for (mid,) in old:
            self._db.execute(
                f"drop table vec_{int(mid)}; drop table bit_{int(mid)};"
                f"delete from models where id = {int(mid)}"
            )

    @staticmethod
    def _missing_sql(model: ModelInfo, *, count: bool) -> str:
        what = "count(*)" if count else "c.id, c.text"
        return (
            f"select {what} from chunks c where not exists"
            f" (select 1 from vec_{model.id} v where v.chunk_id = c.id)"
        )

    def missing(self, model: ModelInfo, limit: int, after: int = 0) -> list[tuple[int, str]]:
        sql = self._missing_sql(model, count=False) + " and c.id > ? order by c.id limit ?"
        return [(int(i), str(t)) for i, t in self._rows(sql, (after, limit))]

    def count_missing(self, model: ModelInfo) -> int:
        return int(self._rows(self._missing_sql(model, count=True))[0][0])

    def put_vectors(self, model: ModelInfo, ids: Sequence[int], vectors: np.ndarray) -> None:
        with self._write():
            tenants = dict(
                self._db.execute(
                    "select id, tenant from chunks where id in (select value from json_each(?))",
                    (json.dumps([int(i) for i in ids]),),
                )
            )
            self._insert_vectors(
                model.id,
                [(i, tenants[i], v) for i, v in zip(ids, vectors, strict=True) if i in tenants],
            )

    def _insert_vectors(self, mid: int, rows: list[tuple[int, str, np.ndarray]]) -> None:
        self._db.executemany(
            f"insert or replace into vec_{mid}(chunk_id, tenant, emb) values (?,?,?)",
            [(int(i), t, np.asarray(v, np.float32).tobytes()) for i, t, v in rows],
        )
        self._db.executemany(
            f"insert or replace into bit_{mid}(chunk_id, tenant, bits, emb) values (?,?,?,?)",
            [
                (
                    int(i),
                    t,
                    signature(np.asarray(v, np.float32)).tobytes(),
                    np.asarray(v, np.float32).tobytes(),
                )
                for i, t, v in rows
            ],
        )

    # -- documents -----------------------------------------------------------------------

    def documents(self, tenant: str, root: str | None = None) -> dict[str, StoredDoc]:
        sql = "select id, hash, stamp, root from documents where tenant = ?"
        args: list[Any] = [tenant]
        if root is not None:
            sql += " and root = ?"
            args.append(root)
        return {r[0]: StoredDoc(*r) for r in self._rows(sql, args)}

    def vectors_of(self, tenant: str, doc_id: str, model: ModelInfo) -> dict[str, np.ndarray]:
        rows = self._rows(
            f"select c.hash, v.emb from chunks c join bit_{model.id} v on v.chunk_id = c.id"
            " where c.tenant = ? and c.doc_id = ?",
            (tenant, doc_id),
        )
        return {h: np.frombuffer(e, np.float32) for h, e in rows}

    def put_document(
        self,
        doc: Document,
        *,
        doc_hash: str,
        stamp: str,
        root: str,
        chunks: Sequence[Chunk],
        vectors: dict[int, np.ndarray],
    ) -> None:
        models = {m.id for m in self.models() if m.state != "retired"}
        with self._write():
            self._drop_retired()
            self._delete(doc.tenant, [doc.id])
            self._db.execute(
                "insert into documents values (?,?,?,?,?,?,?,?,?,?)",
                (
                    doc.tenant,
                    doc.id,
                    root,
                    doc.source,
                    doc_hash,
                    stamp,
                    doc.modified,
                    json.dumps(list(doc.tags)),
                    json.dumps(doc.meta),
                    time.time(),
                ),
            )
            ids = []
            for i, c in enumerate(chunks):
                self._db.execute(
                    'insert into chunks(tenant, doc_id, ord, start, "end", tokens, hash, text)'
                    " values (?,?,?,?,?,?,?,?)",
                    (doc.tenant, doc.id, i, c.start, c.end, c.tokens, c.hash, c.text),
                )
                ids.append(self._db.last_insert_rowid())
            self._kw.add(
                self._sql, doc.tenant, [(i, c.text) for i, c in zip(ids, chunks, strict=True)]
            )
            for mid, rows in vectors.items():
                if mid in models:
                    self._insert_vectors(
                        mid, [(i, doc.tenant, v) for i, v in zip(ids, rows, strict=True)]
                    )

    def touch(self, tenant: str, doc_id: str, stamp: str) -> None:
        with self._write():
            self._db.execute(
                "update documents set stamp = ? where tenant = ? and id = ?",
                (stamp, tenant, doc_id),
            )

    def delete_documents(self, tenant: str, ids: Sequence[str]) -> int:
        with self._write():
            return self._delete(tenant, ids)

    def _delete(self, tenant: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        doc_ids = json.dumps(list(ids))
        chunk_ids = [
            (r[0],)
            for r in self._db.execute(
                "select id from chunks where tenant = ? and doc_id in"
                " (select value from json_each(?))",
                (tenant, doc_ids),
            )
        ]
        for (mid,) in list(self._db.execute("select id from models")):
            self._db.executemany(f"delete from vec_{mid} where chunk_id = ?", chunk_ids)
            self._db.executemany(f"delete from bit_{mid} where chunk_id = ?", chunk_ids)
        self._kw.remove(self._sql, tenant, [c for (c,) in chunk_ids])
        self._db.execute(
            "delete from chunks where tenant = ? and doc_id in (select value from json_each(?))",
            (tenant, doc_ids),
        )
        self._db.execute(
            "delete from documents where tenant = ? and id in (select value from json_each(?))",
            (tenant, doc_ids),
        )
        return self._db.changes()

    # -- search --------------------------------------------------------------------------

    def _tenant_size(self, tenant: str) -> int:
        with self._lock:
            version = self._version()
            cached = self._counts.get(tenant)
            if cached is not None and cached[0] == version:
                return cached[1]
            sql = "select count(*) from chunks where tenant = ?"
            (n,) = self._rows_locked(sql, (tenant,))[0]
            self._counts[tenant] = (version, int(n))
            return int(n)

    def vector_search(
        self, tenant: str, model: ModelInfo, vector: np.ndarray, k: int, filters: Filters
    ) -> list[tuple[int, float]]:
        q = np.asarray(vector, np.float32)
        if filters.empty:
            return self._nearest(tenant, model, q, k, self._tenant_size(tenant))
        where, args = _conditions(filters)
        allowed = [
            r[0]
            for r in self._rows(
                "select c.id from chunks c join documents d on d.tenant = c.tenant"
                f" and d.id = c.doc_id where c.tenant = ? {where} limit ?",
                [tenant, *args, self.few + 1],
            )
        ]
        if len(allowed) <= self.few:
            return self._rank(model, q, allowed)[:k]
        n = self._tenant_size(tenant)
        want = k * 8
        while True:
            found = self._nearest(tenant, model, q, min(want, n), n)
            kept = self._passing(tenant, [i for i, _ in found], where, args)
            hits = [(i, s) for i, s in found if i in kept]
            if len(hits) >= k or want >= n:
                return hits[:k]
            want *= 4

    def _nearest(
        self, tenant: str, model: ModelInfo, q: np.ndarray, k: int, n: int
    ) -> list[tuple[int, float]]:
        if k <= 0 or n == 0:
            return []
        if n <= self.exact_limit or k > 4096:
            if k > 4096:  # vec0's own limit on k: rank everything the slow way
                return self._rank(model, q, [r[0] for r in self._rows(
                    "select id from chunks where tenant = ?", (tenant,))])[:k]  # fmt: skip
            rows = self._rows(
                f"select chunk_id, distance from vec_{model.id}"
                " where emb match ? and k = ? and tenant = ?",
                (q.tobytes(), k, tenant),
            )
            return [(int(i), 1.0 - float(d)) for i, d in rows]
        ids, bits = self._bits(tenant, model)
        mine = signature(q).view(np.uint64)
        distance = np.bitwise_count(bits ^ mine).sum(axis=1)
        take = min(len(ids), max(self.coarse, 4 * k))
        near = np.argpartition(distance, take - 1)[:take] if take < len(ids) else slice(None)
        return self._rank(model, q, ids[near].tolist())[:k]

    def _bits(self, tenant: str, model: ModelInfo) -> tuple[np.ndarray, np.ndarray]:
        """The tenant's signatures as one matrix, read from the store once per change of
        the database (any connection's commit) and kept: one numpy popcount over all of
        them costs the same whatever the number of candidates, where ``vec0``'s own bit
        search costs time in proportion to its ``k`` (the candidates re-ranking needs)."""
        with self._lock:
            version = self._version()
            cached = self._bit_cache.get((tenant, model.id))
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            rows = self._rows_locked(
                f"select chunk_id, bits from bit_{model.id} where tenant = ?", (tenant,)
            )
            ids = np.array([r[0] for r in rows], np.int64)
            width = len(signature(np.zeros(model.dim, np.float32)))
            raw = b"".join(r[1].ljust(width, b"\x00") for r in rows)
            bits = np.frombuffer(raw, np.uint8).reshape(len(rows), width).view(np.uint64)
            self._bit_cache[(tenant, model.id)] = (version, ids, bits)
            return ids, bits

    def _version(self) -> tuple[int, int]:
        """Moves when any connection commits (``data_version`` for the others,
        ``total_changes`` for this one)."""
        (other,) = self._rows_locked("pragma data_version")[0]
        return int(other), self._db.total_changes()

    def _rank(self, model: ModelInfo, q: np.ndarray, ids: Sequence[int]) -> list[tuple[int, float]]:
        """Exact cosine similarity of ``ids``, their vectors read by key from the plain table
        in one statement (in vec0 a point lookup reads a whole storage chunk)."""
        if not ids:
            return []
        found = self._rows(
            f"select chunk_id, emb from bit_{model.id}"
            " where chunk_id in (select value from json_each(?))",
            (json.dumps([int(i) for i in ids]),),
        )
        if not found:
            return []
        m = np.frombuffer(b"".join(e for _, e in found), np.float32).reshape(len(found), -1)
        scores = m @ q
        order = np.lexsort((np.array([i for i, _ in found]), -scores))  # ties by id
        return [(int(found[j][0]), float(scores[j])) for j in order]

    def _passing(self, tenant: str, ids: list[int], where: str, args: list[Any]) -> set[int]:
        rows = self._rows(
            "select c.id from chunks c join documents d on d.tenant = c.tenant and d.id = c.doc_id"
            f" where +c.tenant = ? and c.id in (select value from json_each(?)) {where}",
            [tenant, json.dumps(ids), *args],
        )
        return {r[0] for r in rows}

    def keyword_search(
        self, tenant: str, query: str, k: int, filters: Filters
    ) -> list[tuple[int, float]]:
        """BM25 over the tenant's chunks that hold a word of the query."""
        if k <= 0:
            return []
        with self._lock:
            self._db.execute("begin")  # counts and postings from one snapshot
            try:
                ranking = self._kw.rank(self._sql, tenant, query)
            finally:
                self._db.execute("commit")
        if filters.empty:
            return ranking.top(k)
        where, args = _conditions(filters)
        return ranking.passing(k, lambda ids: self._passing(tenant, ids, where, args))

    def chunks(self, tenant: str, ids: Sequence[int]) -> dict[int, Hit]:
        rows = self._rows(
            'select c.id, c.doc_id, c.text, c.start, c."end", d.source, d.meta, d.tags'
            " from chunks c join documents d on d.tenant = c.tenant and d.id = c.doc_id"
            # ``+c.tenant``: look the ids up by key (the tenant is still checked); on the
            # tenant's index SQLite would walk every chunk of the tenant
            " where +c.tenant = ? and c.id in (select value from json_each(?))",
            (tenant, json.dumps([int(i) for i in ids])),
        )
        out = {}
        for cid, doc, text, start, end, source, meta, tags in rows:
            info = {**json.loads(meta), "tags": json.loads(tags)}
            out[int(cid)] = Hit(int(cid), doc, text, start, end, 0.0, source, info)
        return out

    # -- bookkeeping ---------------------------------------------------------------------

    def add_root(self, root: Root) -> None:
        with self._write():
            self._db.execute(
                "insert or replace into roots values (?,?,?,?)",
                (root.path, root.tenant, root.chunker, root.indexed_at),
            )

    def set_skipped(self, tenant: str, root: str, skipped: dict[str, tuple[str, str]]) -> None:
        """Replace the root's record of unreadable files (id -> (stamp, reason))."""
        with self._write():
            self._db.execute("delete from skipped where tenant = ? and root = ?", (tenant, root))
            self._db.executemany(
                "insert into skipped values (?,?,?,?,?)",
                [(tenant, root, i, st, why) for i, (st, why) in skipped.items()],
            )

    def skipped(self, tenant: str, root: str) -> dict[str, tuple[str, str]]:
        rows = self._rows(
            "select id, stamp, reason from skipped where tenant = ? and root = ?", (tenant, root)
        )
        return {i: (st, why) for i, st, why in rows}

    def roots(self) -> list[Root]:
        return [Root(*r) for r in self._rows("select * from roots order by path, tenant")]

    def stats(self, tenant: str | None = None) -> Stats:
        cond, args = ("where tenant = ?", [tenant]) if tenant is not None else ("", [])
        (docs,) = self._rows(f"select count(*) from documents {cond}", args)[0]
        (chunks,) = self._rows(f"select count(*) from chunks {cond}", args)[0]
        vectors = {}
        for m in self.models():
            if m.state == "retired":
                continue
            (n,) = self._rows(f"select count(*) from vec_{m.id} {cond}", args)[0]
            vectors[m.name] = int(n)
        return Stats(int(docs), int(chunks), vectors)


class _Sql:
    """The keyword index's view of this connection (the caller holds the lock and the
    transaction)."""

    def __init__(self, db: apsw.Connection) -> None:
        self._db = db

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._db.execute(sql, args))

    def run(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._db.execute(sql, args)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)


def _conditions(f: Filters) -> tuple[str, list[Any]]:
    """SQL over ``c`` (chunks) and ``d`` (documents) for ``f``, with its arguments."""
    parts: list[str] = []
    args: list[Any] = []
    if f.doc_ids:
        parts.append("c.doc_id in (select value from json_each(?))")
        args.append(json.dumps(list(f.doc_ids)))
    if f.source_prefix is not None:
        parts.append("substr(d.source, 1, ?) = ?")
        args += [len(f.source_prefix), f.source_prefix]
    if f.tags:
        parts.append(
            "exists (select 1 from json_each(d.tags) t where t.value in"
            " (select value from json_each(?)))"
        )
        args.append(json.dumps(list(f.tags)))
    if f.modified_after is not None:
        parts.append("d.modified >= ?")
        args.append(f.modified_after)
    if f.modified_before is not None:
        parts.append("d.modified <= ?")
        args.append(f.modified_before)
    for key, value in f.meta:
        if not _META_KEY.fullmatch(key):
            raise ValueError(f"meta filter key {key!r}: letters, digits, '_', '.', '-' only")
        parts.append(f"json_extract(d.meta, '$.\"{key}\"') = ?")
        args.append(int(value) if isinstance(value, bool) else value)
    return "".join(" and " + p for p in parts), args
