"""BM25 over postings kept in the document database, scored in numpy: one keyword index
for both stores.

Why not the databases' own ranking: FTS5's ``bm25()`` and Postgres's ``ts_rank_cd`` are
functions called once per matching row, so an OR over a query's words scores every chunk
that holds any of them, one row at a time (30–55 ms at 100,000 chunks in SQLite, 0.5–1.2 s
in Postgres: ``bench/rag_latency.py``).  Here a term's postings are three arrays in one
row — chunk ids, term frequencies, chunk lengths — so a query reads one row per word and
segment and scores all of its chunks in a few vector operations.  Both stores rank by the
same BM25 (Robertson's, with Lucene's non-negative idf; k1 1.2, b 0.75) over the same
tokens (FTS5's Porter tokenizer, :mod:`fleetpilot.rag.keywords`), with document
frequencies and lengths counted per tenant, so one tenant's corpus never shifts another's
ranking.

**Segments.**  A write (one document's chunks) adds one immutable segment; when ``fanout``
segments of one size tier exist they merge into one (size-tiered, as Lucene and Cassandra
do), so a tenant holds O(``fanout`` × log n) segments and a posting is rewritten O(log n)
times however the index grew.  A removed chunk is recorded against its segment and masked at
query time until that segment merges; a segment whose chunks are all gone is dropped at
once.  Merges run inside the write that triggers them, so the index is never behind the
chunks it describes.

The index does not own a connection: each call takes the store's :class:`Sql` inside the
store's own transaction, so postings change atomically with the chunks they describe.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fleetpilot.rag.keywords import document_terms, query_terms

__all__ = ["K1", "B", "KeywordIndex", "Ranking", "Sql"]

K1, B = 1.2, 0.75
_TF_MAX = np.iinfo(np.uint16).max


class Sql(Protocol):
    """A store's connection inside its current transaction, ``?`` placeholders."""

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def run(self, sql: str, args: Sequence[Any] = ()) -> None: ...
    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Ranking:
    """Every chunk that holds a query word, with its BM25 score (unordered)."""

    ids: np.ndarray
    scores: np.ndarray

    def top(self, k: int) -> list[tuple[int, float]]:
        if k <= 0 or not len(self.ids):
            return []
        take = np.argpartition(-self.scores, k - 1)[:k] if k < len(self.ids) else None
        ids, scores = (
            (self.ids, self.scores) if take is None else (self.ids[take], self.scores[take])
        )
        order = np.lexsort((ids, -scores))  # best first, ties by id: the same on both stores
        return [(int(ids[j]), float(scores[j])) for j in order]

    def passing(self, k: int, allowed: Callable[[list[int]], set[int]]) -> list[tuple[int, float]]:
        """The best ``k`` that ``allowed`` keeps (a metadata filter), asked in widening
        batches down the ranking, so a selective filter still fills ``k`` when it can."""
        order = np.lexsort((self.ids, -self.scores))
        ids, scores = self.ids[order], self.scores[order]
        out: list[tuple[int, float]] = []
        start, step = 0, max(8 * k, 256)
        while len(out) < k and start < len(ids):
            batch = ids[start : start + step].tolist()
            kept = allowed(batch)
            out += [
                (i, float(s))
                for i, s in zip(batch, scores[start : start + step], strict=True)
                if i in kept
            ]
            start, step = start + step, step * 4
        return out[:k]


_EMPTY = Ranking(np.zeros(0, np.int64), np.zeros(0))


@dataclass(frozen=True, slots=True)
class _Postings:
    ids: np.ndarray  # int64 chunk ids
    tfs: np.ndarray  # uint16
    lens: np.ndarray  # uint16 chunk lengths in tokens

    @staticmethod
    def of(row: Sequence[Any]) -> _Postings:
        ids, tfs, lens = row
        return _Postings(
            np.frombuffer(ids, np.int64),
            np.frombuffer(tfs, np.uint16),
            np.frombuffer(lens, np.uint16),
        )

    def without(self, gone: np.ndarray) -> _Postings:
        if not len(gone):
            return self
        keep = ~np.isin(self.ids, gone)
        return _Postings(self.ids[keep], self.tfs[keep], self.lens[keep])

    @staticmethod
    def joined(parts: list[_Postings]) -> _Postings:
        if len(parts) == 1:
            return parts[0]
        return _Postings(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.tfs for p in parts]),
            np.concatenate([p.lens for p in parts]),
        )


def schema(prefix: str, *, blob: str = "blob", bigint: str = "integer", keyed: str = "") -> str:
    """The index's tables; ``keyed`` ends a table keyed by its primary key alone (SQLite's
    ``without rowid``)."""
    p = prefix
    return f"""
create table if not exists {p}state(
  tenant text primary key, chunks {bigint} not null, length {bigint} not null,
  generation {bigint} not null, next_seg {bigint} not null){keyed};
create table if not exists {p}segments(
  tenant text not null, seg {bigint} not null, live {bigint} not null,
  tier integer not null, primary key (tenant, seg)){keyed};
create table if not exists {p}postings(
  tenant text not null, term text not null, seg {bigint} not null, ids {blob} not null,
  tfs {blob} not null, lens {blob} not null, primary key (tenant, seg, term)){keyed};
create table if not exists {p}chunks(
  chunk_id {bigint} primary key, tenant text not null, seg {bigint} not null,
  length integer not null);
create index if not exists {p}chunks_seg on {p}chunks(tenant, seg);
create table if not exists {p}gone(
  tenant text not null, seg {bigint} not null, chunk_id {bigint} not null,
  primary key (tenant, seg, chunk_id)){keyed};
"""


class KeywordIndex:
    fanout = 8  # segments of one size tier that merge into one

    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self._gone: dict[str, tuple[int, np.ndarray]] = {}  # tenant -> (generation, ids)

    # -- writing -------------------------------------------------------------------------

    def fill(self, sql: Sql, chunks_table: str) -> None:
        """Index every chunk of a store written before the index existed: once, since an
        index that holds any chunk is left alone."""
        if sql.rows(f"select exists (select 1 from {self.p}chunks)")[0][0]:
            return
        by_tenant: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for cid, tenant, text in sql.rows(
            f"select id, tenant, text from {chunks_table} order by id"
        ):
            by_tenant[tenant].append((cid, text))
        for tenant, rows in by_tenant.items():
            for i in range(0, len(rows), 4096):
                self.add(sql, tenant, rows[i : i + 4096])

    def add(self, sql: Sql, tenant: str, chunks: Sequence[tuple[int, str]]) -> None:
        """Index ``(chunk id, text)`` pairs as one new segment."""
        if not chunks:
            return
        self._hold(sql, tenant)
        keys: dict[str, int] = {}
        key: list[int] = []
        ids: list[int] = []
        tfs: list[int] = []
        lens: list[int] = []
        lengths = []
        for cid, text in chunks:
            terms = document_terms(text)
            length = min(len(terms), _TF_MAX)
            lengths.append((cid, tenant, length))
            counts = Counter(terms)
            key += [keys.setdefault(t, len(keys)) for t in counts]
            tfs += counts.values()
            ids += [cid] * len(counts)
            lens += [length] * len(counts)
        flat = _Postings(
            np.array(ids, np.int64),
            np.minimum(np.array(tfs, np.int64), _TF_MAX).astype(np.uint16),
            np.array(lens, np.uint16),
        )
        seg = self._new_segment(sql, tenant, list(keys), np.array(key, np.int64), flat, len(chunks))
        sql.many(
            f"insert into {self.p}chunks values (?, ?, ?, ?)",
            [(cid, t, seg, n) for cid, t, n in lengths],
        )
        self._count(sql, tenant, len(chunks), sum(n for *_, n in lengths))
        self._settle(sql, tenant)

    def remove(self, sql: Sql, tenant: str, chunk_ids: Sequence[int]) -> None:
        if not chunk_ids:
            return
        self._hold(sql, tenant)
        marks = ",".join("?" * len(chunk_ids))
        rows = sql.rows(
            f"select chunk_id, seg, length from {self.p}chunks"
            f" where tenant = ? and chunk_id in ({marks})",
            [tenant, *chunk_ids],
        )
        if not rows:
            return
        sql.many(f"insert into {self.p}gone values (?, ?, ?)", [(tenant, s, c) for c, s, _ in rows])
        sql.run(
            f"delete from {self.p}chunks where tenant = ? and chunk_id in ({marks})",
            [tenant, *chunk_ids],
        )
        per_seg: dict[int, int] = defaultdict(int)
        for _, s, _ in rows:
            per_seg[s] += 1
        sql.many(
            f"update {self.p}segments set live = live - ? where tenant = ? and seg = ?",
            [(n, tenant, s) for s, n in per_seg.items()],
        )
        for (s,) in sql.rows(
            f"select seg from {self.p}segments where tenant = ? and live <= 0", [tenant]
        ):
            self._drop_segment(sql, tenant, s)
        self._count(sql, tenant, -len(rows), -sum(n for _, _, n in rows))

    def _hold(self, sql: Sql, tenant: str) -> None:
        """Take the tenant's state row before reading anything of its index: in Postgres the
        update locks the row until the transaction ends, so two writers of one tenant (two
        ingest processes) run one after the other and each reads what the other committed
        (without it both would take the same segment number, or merge the same segments);
        SQLite's writers are one at a time already."""
        sql.run(
            f"insert into {self.p}state values (?, 0, 0, 0, 1) on conflict (tenant) do nothing",
            [tenant],
        )
        sql.run(f"update {self.p}state set next_seg = next_seg where tenant = ?", [tenant])

    def _count(self, sql: Sql, tenant: str, chunks: int, length: int) -> None:
        sql.run(
            f"update {self.p}state set chunks = chunks + ?, length = length + ?,"
            " generation = generation + 1 where tenant = ?",
            [chunks, length, tenant],
        )

    def _new_segment(
        self,
        sql: Sql,
        tenant: str,
        terms: list[str],
        key: np.ndarray,
        flat: _Postings,
        size: int,
    ) -> int:
        """Write a segment from flat postings, ``key`` naming each one's term in ``terms``:
        one stable sort groups them, so the per-term work is three slices."""
        ((seg,),) = sql.rows(f"select next_seg from {self.p}state where tenant = ?", [tenant])
        sql.run(f"update {self.p}state set next_seg = next_seg + 1 where tenant = ?", [tenant])
        sql.run(
            f"insert into {self.p}segments values (?, ?, ?, ?)",
            [tenant, seg, size, self._tier(size)],
        )
        order = np.argsort(key, kind="stable")
        ids, tfs, lens = flat.ids[order], flat.tfs[order], flat.lens[order]
        ends = np.cumsum(np.bincount(key, minlength=len(terms))).tolist()
        rows, start = [], 0
        for t, end in zip(terms, ends, strict=True):
            if end > start:
                rows.append(
                    (
                        tenant,
                        t,
                        seg,
                        ids[start:end].tobytes(),
                        tfs[start:end].tobytes(),
                        lens[start:end].tobytes(),
                    )
                )
            start = end
        sql.many(f"insert into {self.p}postings values (?, ?, ?, ?, ?, ?)", rows)
        return int(seg)

    def _tier(self, size: int) -> int:
        return int(math.log(max(size, 1)) / math.log(self.fanout))

    def _drop_segment(self, sql: Sql, tenant: str, seg: int) -> None:
        for table in ("segments", "postings", "gone"):
            sql.run(f"delete from {self.p}{table} where tenant = ? and seg = ?", [tenant, seg])

    def _settle(self, sql: Sql, tenant: str) -> None:
        """Merge while some tier holds ``fanout`` segments (the lowest tier first, its oldest
        segments), so merges cascade up as a binary counter's carries do."""
        while True:
            rows = sql.rows(
                f"select seg, tier from {self.p}segments where tenant = ? order by tier, seg",
                [tenant],
            )
            tiers: dict[int, list[int]] = defaultdict(list)
            for seg, tier in rows:
                tiers[tier].append(seg)
            full = next(
                (segs for _, segs in sorted(tiers.items()) if len(segs) >= self.fanout), None
            )
            if full is None:
                return
            self._merge(sql, tenant, full[: self.fanout])

    def _merge(self, sql: Sql, tenant: str, segs: list[int]) -> None:
        marks = ",".join("?" * len(segs))
        gone = np.array(
            [
                r[0]
                for r in sql.rows(
                    f"select chunk_id from {self.p}gone where tenant = ? and seg in ({marks})",
                    [tenant, *segs],
                )
            ],
            np.int64,
        )
        rows = sql.rows(
            f"select term, ids, tfs, lens from {self.p}postings"
            f" where tenant = ? and seg in ({marks}) order by seg",
            [tenant, *segs],
        )
        keys: dict[str, int] = {}
        per_row = np.array([keys.setdefault(r[0], len(keys)) for r in rows], np.int64)
        flat = _Postings(
            np.frombuffer(b"".join(r[1] for r in rows), np.int64),
            np.frombuffer(b"".join(r[2] for r in rows), np.uint16),
            np.frombuffer(b"".join(r[3] for r in rows), np.uint16),
        )
        key = np.repeat(per_row, [len(r[1]) // 8 for r in rows])
        if len(gone):
            keep = ~np.isin(flat.ids, gone)
            key, flat = key[keep], _Postings(flat.ids[keep], flat.tfs[keep], flat.lens[keep])
        ((live,),) = sql.rows(
            f"select sum(live) from {self.p}segments where tenant = ? and seg in ({marks})",
            [tenant, *segs],
        )
        for seg in segs:
            self._drop_segment(sql, tenant, seg)
        seg = self._new_segment(sql, tenant, list(keys), key, flat, int(live or 0))
        sql.run(
            f"update {self.p}chunks set seg = ? where tenant = ? and seg in ({marks})",
            [seg, tenant, *segs],
        )

    # -- reading -------------------------------------------------------------------------

    def rank(self, sql: Sql, tenant: str, query: str) -> Ranking:
        """Every chunk of ``tenant`` holding a word of ``query``, scored by BM25.  Call it
        inside one read transaction, so the counts and postings come from one snapshot."""
        terms = query_terms(query)
        if not terms:
            return _EMPTY
        state = sql.rows(
            f"select chunks, length, generation from {self.p}state where tenant = ?", [tenant]
        )
        if not state or state[0][0] <= 0:
            return _EMPTY
        n, total, generation = (int(x) for x in state[0])
        gone = self._gone_ids(sql, tenant, generation)
        marks = ",".join("?" * len(terms))
        parts: dict[str, list[_Postings]] = defaultdict(list)
        # naming the segments lets the key (tenant, seg, term) be looked up segment by
        # segment; with the tenant alone the database would read all of its postings
        for term, *blobs in sql.rows(
            f"select term, ids, tfs, lens from {self.p}postings where tenant = ?"
            f" and seg in (select seg from {self.p}segments where tenant = ?)"
            f" and term in ({marks})",
            [tenant, tenant, *terms],
        ):
            parts[term].append(_Postings.of(blobs))
        if not parts:
            return _EMPTY
        avg = total / n
        ids, weights = [], []
        for ps in parts.values():
            p = _Postings.joined(ps).without(gone)
            df = len(p.ids)
            if not df:
                continue
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            tf = p.tfs.astype(np.float64)
            norm = K1 * (1.0 - B + B * p.lens / avg)
            ids.append(p.ids)
            weights.append(idf * tf * (K1 + 1.0) / (tf + norm))
        if not ids:
            return _EMPTY
        return _accumulate(np.concatenate(ids), np.concatenate(weights))

    def _gone_ids(self, sql: Sql, tenant: str, generation: int) -> np.ndarray:
        cached = self._gone.get(tenant)
        if cached is not None and cached[0] == generation:
            return cached[1]
        ids = np.array(
            [
                r[0]
                for r in sql.rows(f"select chunk_id from {self.p}gone where tenant = ?", [tenant])
            ],
            np.int64,
        )
        self._gone[tenant] = (generation, ids)
        return ids


def _accumulate(ids: np.ndarray, weights: np.ndarray) -> Ranking:
    """Sum each chunk's term scores: a dense count over the ids' span when it is not much
    wider than the postings (the usual case: ids are allocated in order), else a sort."""
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 4 * len(ids) + 65_536:
        sums = np.bincount(ids - lo, weights, minlength=hi - lo + 1)
        hit = np.flatnonzero(sums)
        return Ranking(hit.astype(np.int64) + lo, sums[hit])
    uniq, inverse = np.unique(ids, return_inverse=True)
    return Ranking(uniq, np.bincount(inverse, weights))
