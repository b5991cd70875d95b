"""The store at scale: Postgres with pgvector, documents and vectors in one database.

The same schema as the SQLite store, in ``rag_*`` tables: a vector row references its chunk
(``on delete cascade``, so a deleted chunk can never leave a vector behind), keyword search
is :mod:`fleetpilot.rag.bm25`'s index in ``rag_kw_*`` tables (the same BM25 as SQLite's;
Postgres's own ``ts_rank_cd`` is not BM25 and ranks each matching row in turn, 0.5–1.2 s at
100,000 chunks), and each model's vectors have an HNSW index (cosine).  Every query is
filtered by tenant.  Where a filter is selective Postgres's planner ranks the few rows it
allows exactly; where it walks the HNSW index instead, the scan returns only the filtered
share of its ``ef_search`` candidates, so a filter (a small tenant, one tag) would silently
return too few rows — pgvector 0.8's
iterative scans keep walking until ``k`` pass (``hnsw.iterative_scan = relaxed_order``), and
the rows are re-sorted exactly afterwards.  A test forces the index path and shows both.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg

from fleetpilot.rag.bm25 import KeywordIndex, schema
from fleetpilot.rag.chunking import Chunk
from fleetpilot.rag.documents import Document
from fleetpilot.rag.store import Filters, Hit, ModelInfo, Root, Stats, StoredDoc

__all__ = ["PostgresStore"]

_SCHEMA = """
create extension if not exists vector;
create table if not exists rag_models(
  id serial primary key, name text not null unique, spec text not null, dim int not null,
  state text not null, changed double precision not null);
create table if not exists rag_documents(
  tenant text not null, id text not null, root text not null, source text not null,
  hash text not null, stamp text not null, modified double precision not null,
  tags jsonb not null, meta jsonb not null, indexed_at double precision not null,
  primary key (tenant, id));
create table if not exists rag_chunks(
  id bigserial primary key, tenant text not null, doc_id text not null, ord int not null,
  start int not null, "end" int not null, tokens int not null, hash text not null,
  text text not null,
  foreign key (tenant, doc_id) references rag_documents(tenant, id) on delete cascade);
create index if not exists rag_chunks_doc on rag_chunks(tenant, doc_id);
alter table rag_chunks drop column if exists tsv;
create table if not exists rag_skipped(
  tenant text not null, root text not null, id text not null, stamp text not null,
  reason text not null, primary key (tenant, root, id));
create table if not exists rag_roots(
  path text not null, tenant text not null, chunker text not null,
  indexed_at double precision not null, primary key (path, tenant));
""" + schema("rag_kw_", blob="bytea", bigint="bigint")


def _vec(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(v, np.float32)) + "]"


class PostgresStore:
    ef_search = 100  # HNSW candidates per scan (pgvector's default is 40)
    iterative = True  # pgvector's iterative index scans (off: a filter may return too few)
    index_only = False  # the HNSW index even where the planner would rank exactly (tests)
    retire_grace_s = 30.0  # a replaced model's table is kept this long for searches under way

    def __init__(self, url: str) -> None:
        self.url = url
        self._kw = KeywordIndex("rag_kw_")
        self._db = psycopg.connect(url, autocommit=True)
        self._lock = threading.RLock()
        with self._write() as cur:
            cur.execute("select pg_advisory_xact_lock(7316)")  # two first starts: one schema
            cur.execute(_SCHEMA)
            self._kw.fill(_Sql(cur), "rag_chunks")

    @contextmanager
    def _write(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            yield cur

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self._db.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- models --------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        rows = self._rows("select id, name, spec, dim, state from rag_models order by id")
        return [ModelInfo(*r) for r in rows]

    def active_model(self) -> ModelInfo | None:
        return next((m for m in self.models() if m.state == "active"), None)

    def add_model(self, name: str, spec: str, dim: int) -> ModelInfo:
        with self._write() as cur:
            cur.execute("lock table rag_models in exclusive mode")
            self._drop_retired(cur)
            cur.execute("select id, state from rag_models where name = %s", (name,))
            found = cur.fetchone()
            if found is not None and found[1] == "retired":  # its vectors are still right
                cur.execute(
                    "update rag_models set state = 'building', changed = %s where id = %s",
                    (time.time(), found[0]),
                )
            if found is None:
                cur.execute("select 1 from rag_models where state = 'active'")
                state = "building" if cur.fetchone() else "active"
                cur.execute(
                    "insert into rag_models(name, spec, dim, state, changed)"
                    " values (%s,%s,%s,%s,%s) returning id",
                    (name, spec, dim, state, time.time()),
                )
                (mid,) = cur.fetchone() or (0,)
                cur.execute(
                    f"create table rag_vec_{mid}(chunk_id bigint primary key references"
                    f" rag_chunks(id) on delete cascade, tenant text not null,"
                    f" emb vector({int(dim)}) not null);"
                    f"create index rag_vec_{mid}_hnsw on rag_vec_{mid}"
                    f" using hnsw (emb vector_cosine_ops);"
                    f"create index rag_vec_{mid}_tenant on rag_vec_{mid}(tenant)"
                )
            else:
                mid = found[0]
        return next(m for m in self.models() if m.id == mid)

    def _missing_sql(self, model: ModelInfo, what: str) -> str:
        return (
            f"select {what} from rag_chunks c where not exists"
            f" (select 1 from rag_vec_{model.id} v where v.chunk_id = c.id)"
        )

    def count_missing(self, model: ModelInfo) -> int:
        return int(self._rows(self._missing_sql(model, "count(*)"))[0][0])

    def missing(self, model: ModelInfo, limit: int, after: int = 0) -> list[tuple[int, str]]:
        sql = self._missing_sql(model, "c.id, c.text") + " and c.id > %s order by c.id limit %s"
        return [(int(i), str(t)) for i, t in self._rows(sql, (after, limit))]

    def activate(self, model: ModelInfo) -> None:
        with self._write() as cur:
            cur.execute("lock table rag_models, rag_chunks in share row exclusive mode")
            cur.execute(self._missing_sql(model, "count(*)"))
            (n,) = cur.fetchone() or (0,)
            if n:
                raise ValueError(f"{n} chunks have no vector from {model.name} yet")
            cur.execute(
                "update rag_models set state = 'retired', changed = %s where state = 'active'",
                (time.time(),),
            )
            cur.execute(
                "update rag_models set state = 'active', changed = %s where id = %s",
                (time.time(), model.id),
            )
            self._drop_retired(cur)

    def _drop_retired(self, cur: psycopg.Cursor[Any]) -> None:
        """Drop models retired over ``retire_grace_s`` ago (searches under way at the switch
        still find their tables)."""
        cur.execute(
            "select id from rag_models where state = 'retired' and changed < %s",
            (time.time() - self.retire_grace_s,),
        )
        for (mid,) in cur.fetchall():
            cur.execute(f"drop table rag_vec_{int(mid)}")
            cur.execute("delete from rag_models where id = %s", (mid,))

    def put_vectors(self, model: ModelInfo, ids: Sequence[int], vectors: np.ndarray) -> None:
        with self._write() as cur:
            cur.executemany(
                f"insert into rag_vec_{model.id}(chunk_id, tenant, emb)"
                " select id, tenant, %s::vector from rag_chunks where id = %s"
                " on conflict (chunk_id) do update set emb = excluded.emb",
                [(_vec(v), int(i)) for i, v in zip(ids, vectors, strict=True)],
            )

    # -- documents -----------------------------------------------------------------------

    def documents(self, tenant: str, root: str | None = None) -> dict[str, StoredDoc]:
        sql = "select id, hash, stamp, root from rag_documents where tenant = %s"
        args: list[Any] = [tenant]
        if root is not None:
            sql += " and root = %s"
            args.append(root)
        return {r[0]: StoredDoc(*r) for r in self._rows(sql, args)}

    def vectors_of(self, tenant: str, doc_id: str, model: ModelInfo) -> dict[str, np.ndarray]:
        rows = self._rows(
            f"select c.hash, v.emb::text from rag_chunks c join rag_vec_{model.id} v"
            " on v.chunk_id = c.id where c.tenant = %s and c.doc_id = %s",
            (tenant, doc_id),
        )
        return {h: np.array(json.loads(e), np.float32) for h, e in rows}

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
        with self._write() as cur:
            self._drop_retired(cur)
            self._unindex(cur, doc.tenant, [doc.id])
            cur.execute(
                "delete from rag_documents where tenant = %s and id = %s", (doc.tenant, doc.id)
            )
            cur.execute(
                "insert into rag_documents values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
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
                cur.execute(
                    'insert into rag_chunks(tenant, doc_id, ord, start, "end", tokens, hash, text)'
                    " values (%s,%s,%s,%s,%s,%s,%s,%s) returning id",
                    (doc.tenant, doc.id, i, c.start, c.end, c.tokens, c.hash, c.text),
                )
                ids.append((cur.fetchone() or (0,))[0])
            self._kw.add(
                _Sql(cur), doc.tenant, [(i, c.text) for i, c in zip(ids, chunks, strict=True)]
            )
            for mid, rows in vectors.items():
                if mid in models and len(ids):
                    cur.executemany(
                        f"insert into rag_vec_{mid}(chunk_id, tenant, emb)"
                        " values (%s, %s, %s::vector)",
                        [(i, doc.tenant, _vec(v)) for i, v in zip(ids, rows, strict=True)],
                    )

    def touch(self, tenant: str, doc_id: str, stamp: str) -> None:
        with self._write() as cur:
            cur.execute(
                "update rag_documents set stamp = %s where tenant = %s and id = %s",
                (stamp, tenant, doc_id),
            )

    def delete_documents(self, tenant: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._write() as cur:
            self._unindex(cur, tenant, ids)
            cur.execute(
                "delete from rag_documents where tenant = %s and id = any(%s)", (tenant, list(ids))
            )
            return cur.rowcount

    def _unindex(self, cur: psycopg.Cursor[Any], tenant: str, doc_ids: Sequence[str]) -> None:
        """Take the documents' chunks out of the keyword index (the rows themselves go by
        cascade with their document)."""
        cur.execute(
            "select id from rag_chunks where tenant = %s and doc_id = any(%s)",
            (tenant, list(doc_ids)),
        )
        self._kw.remove(_Sql(cur), tenant, [r[0] for r in cur.fetchall()])

    # -- search --------------------------------------------------------------------------

    def vector_search(
        self, tenant: str, model: ModelInfo, vector: np.ndarray, k: int, filters: Filters
    ) -> list[tuple[int, float]]:
        where, args = _conditions(filters)
        q = _vec(vector)
        scope = (
            " and v.chunk_id in (select c.id from rag_chunks c join rag_documents d on"
            f" d.tenant = c.tenant and d.id = c.doc_id where c.tenant = %s {where})"
            if where
            else ""
        )
        with self._write() as cur:
            cur.execute(f"set local hnsw.ef_search = {max(self.ef_search, k)}")
            mode = "relaxed_order" if self.iterative else "off"
            cur.execute(f"set local hnsw.iterative_scan = {mode}")
            if self.index_only:  # no scan, no sort of a filtered set: the HNSW order only
                cur.execute("set local enable_seqscan = off; set local enable_sort = off")
            cur.execute(
                "with near as materialized (select v.chunk_id, v.emb <=> %s::vector as d"
                f" from rag_vec_{model.id} v where v.tenant = %s{scope}"
                " order by v.emb <=> %s::vector limit %s)"
                " select chunk_id, 1 - d from near order by d",
                [q, tenant, *([tenant, *args] if where else []), q, k],
            )
            return [(int(i), float(s)) for i, s in cur.fetchall()]

    def exact_search(
        self, tenant: str, model: ModelInfo, vector: np.ndarray, k: int
    ) -> list[tuple[int, float]]:
        """The same query without the index (a full scan): the truth HNSW's recall is
        measured against."""
        with self._write() as cur:
            cur.execute("set local enable_indexscan = off")
            cur.execute("set local enable_bitmapscan = off")
            q = _vec(vector)
            cur.execute(
                f"select chunk_id, 1 - (emb <=> %s::vector) from rag_vec_{model.id}"
                " where tenant = %s order by emb <=> %s::vector limit %s",
                (q, tenant, q, k),
            )
            return [(int(i), float(s)) for i, s in cur.fetchall()]

    def keyword_search(
        self, tenant: str, query: str, k: int, filters: Filters
    ) -> list[tuple[int, float]]:
        """BM25 over the tenant's chunks that hold a word of the query."""
        if k <= 0:
            return []
        with self._write() as cur:
            cur.execute("set transaction isolation level repeatable read")  # one snapshot
            ranking = self._kw.rank(_Sql(cur), tenant, query)
        if filters.empty:
            return ranking.top(k)
        where, args = _conditions(filters)
        return ranking.passing(k, lambda ids: self._passing(tenant, ids, where, args))

    def _passing(self, tenant: str, ids: list[int], where: str, args: list[Any]) -> set[int]:
        rows = self._rows(
            "select c.id from rag_chunks c join rag_documents d on d.tenant = c.tenant"
            f" and d.id = c.doc_id where c.tenant = %s and c.id = any(%s) {where}",
            [tenant, ids, *args],
        )
        return {int(r[0]) for r in rows}

    def chunks(self, tenant: str, ids: Sequence[int]) -> dict[int, Hit]:
        rows = self._rows(
            'select c.id, c.doc_id, c.text, c.start, c."end", d.source, d.meta, d.tags'
            " from rag_chunks c join rag_documents d on d.tenant = c.tenant and d.id = c.doc_id"
            " where c.tenant = %s and c.id = any(%s)",
            (tenant, [int(i) for i in ids]),
        )
        return {
            int(cid): Hit(int(cid), doc, text, start, end, 0.0, source, {**meta, "tags": tags})
            for cid, doc, text, start, end, source, meta, tags in rows
        }

    # -- bookkeeping ---------------------------------------------------------------------

    def add_root(self, root: Root) -> None:
        with self._write() as cur:
            cur.execute(
                "insert into rag_roots values (%s,%s,%s,%s) on conflict (path, tenant)"
                " do update set chunker = excluded.chunker, indexed_at = excluded.indexed_at",
                (root.path, root.tenant, root.chunker, root.indexed_at),
            )

    def roots(self) -> list[Root]:
        return [Root(*r) for r in self._rows("select * from rag_roots order by path, tenant")]

    def set_skipped(self, tenant: str, root: str, skipped: dict[str, tuple[str, str]]) -> None:
        with self._write() as cur:
            cur.execute("delete from rag_skipped where tenant = %s and root = %s", (tenant, root))
            cur.executemany(
                "insert into rag_skipped values (%s,%s,%s,%s,%s)",
                [(tenant, root, i, st, why) for i, (st, why) in skipped.items()],
            )

    def skipped(self, tenant: str, root: str) -> dict[str, tuple[str, str]]:
        rows = self._rows(
            "select id, stamp, reason from rag_skipped where tenant = %s and root = %s",
            (tenant, root),
        )
        return {i: (st, why) for i, st, why in rows}

    def stats(self, tenant: str | None = None) -> Stats:
        cond, args = ("where tenant = %s", [tenant]) if tenant is not None else ("", [])
        (docs,) = self._rows(f"select count(*) from rag_documents {cond}", args)[0]
        (chunks,) = self._rows(f"select count(*) from rag_chunks {cond}", args)[0]
        vectors = {
            m.name: int(self._rows(f"select count(*) from rag_vec_{m.id} {cond}", args)[0][0])
            for m in self.models()
            if m.state != "retired"
        }
        return Stats(int(docs), int(chunks), vectors)


class _Sql:
    """The keyword index's view of a cursor inside the caller's transaction."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(sql.replace("?", "%s"), args)
        return list(self._cur.fetchall()) if self._cur.description else []

    def run(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._cur.execute(sql.replace("?", "%s"), args)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        if batch:
            self._cur.executemany(sql.replace("?", "%s"), batch)


def _conditions(f: Filters) -> tuple[str, list[Any]]:
    parts: list[str] = []
    args: list[Any] = []
    if f.doc_ids:
        parts.append("c.doc_id = any(%s)")
        args.append(list(f.doc_ids))
    if f.source_prefix is not None:
        parts.append("left(d.source, %s) = %s")
        args += [len(f.source_prefix), f.source_prefix]
    if f.tags:
        parts.append("d.tags ?| %s")
        args.append(list(f.tags))
    if f.modified_after is not None:
        parts.append("d.modified >= %s")
        args.append(f.modified_after)
    if f.modified_before is not None:
        parts.append("d.modified <= %s")
        args.append(f.modified_before)
    for key, value in f.meta:
        parts.append("d.meta -> %s = %s::jsonb")
        args += [key, json.dumps(value)]
    return "".join(" and " + p for p in parts), args
