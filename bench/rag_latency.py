"""Search latency at about 100,000 chunks on one core: hybrid top-10 in SQLite (sqlite-vec +
the BM25 index) and in Postgres (pgvector HNSW + the same BM25 index), each beside exact
vector search and the database's own keyword ranking (FTS5's ``bm25()``, Postgres's
``ts_rank_cd`` over a GIN index) measured in the same run, with recall@10 against exact.

SQLite's ``vec0`` is brute force: past ``exact_limit`` vectors a query takes the ``coarse``
nearest by Hamming distance on one bit per dimension and re-ranks them exactly.  The
``coarse`` count is chosen here on Chroma's questions (the smallest that keeps mean
recall@10 ≥ 0.95) and reported on Cranfield's queries, which did not choose it.

    .venv/bin/python bench/rag_latency.py [--files 1400 --paragraphs 50] [--no-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _machine import OtherLoad
from _ragdata import build, queries
from fleetpilot.rag.embed import embedder
from fleetpilot.rag.keywords import query_terms
from fleetpilot.rag.search import Retriever
from fleetpilot.rag.sqlite import SqliteStore
from fleetpilot.rag.store import Filters

TARGET_P99_MS = 20.0
COARSE = (256, 512, 1024, 2048)
RECALL_FLOOR = 0.95


def _times(fn: Any, items: list[str]) -> np.ndarray:
    for q in items[:10]:
        fn(q)  # warm: pages in the cache, the model loaded
    out = []
    for q in items:
        t0 = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def _recall(
    store: Any, model: Any, vectors: np.ndarray, exact: list[list[tuple[int, float]]], k: int = 10
) -> float:
    """Recall@k against exact search, counting ties: a hit is a returned chunk whose exact
    similarity reaches the exact k-th one's.  The tree repeats paragraphs, so identical
    vectors tie, and which of them an exact scan lists is arbitrary (counted by id alone,
    the same result scored 0.93 or 0.99 depending only on how ties were ordered)."""
    got = [store.vector_search("default", model, v, k, Filters()) for v in vectors]
    hits = [
        sum(s >= e[-1][1] - 1e-6 for _, s in g[:k]) / k if e else 1.0
        for g, e in zip(got, exact, strict=True)
    ]
    return float(np.mean(hits))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=1400)
    ap.add_argument("--paragraphs", type=int, default=50)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--baseline-queries", type=int, default=100, help="Postgres baselines")
    args = ap.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core
    console = Console(width=130)
    sets = queries()
    wl = embedder("wordllama")
    table = Table(title="top-10 search latency, one core")
    for col in ("store", "path", "queries", "chunks", "p50 ms", "p99 ms", "recall@10 vs exact"):
        table.add_column(col, justify="right")
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        load = OtherLoad().__enter__()
        store = SqliteStore(Path(tmp) / "rag.db")
        t0 = time.perf_counter()
        build(Path(tmp) / "docs", store, args.files, args.paragraphs)
        n = store.stats().chunks
        console.print(f"built {n:,} chunks in {time.perf_counter() - t0:.0f} s")
        model = store.active_model()
        r = Retriever(store)
        qv = {name: wl.documents(qs) for name, qs in sets.items()}
        store.exact_limit = 10**9
        exact = {
            name: [store.vector_search("default", model, v, 10, Filters()) for v in vs]
            for name, vs in qv.items()
        }
        # choose the coarse count on Chroma's questions
        chosen = None
        picks = []
        store.exact_limit = 0  # the coarse path, whatever the size
        for c in COARSE:
            store.coarse = c
            rc = _recall(store, model, qv["chroma"], exact["chroma"])
            picks.append(f"{c}: {rc:.3f}")
            if chosen is None and rc >= RECALL_FLOOR:
                chosen = c
        chosen = chosen or COARSE[-1]
        console.print(
            f"coarse candidates -> mean recall@10 on Chroma's questions: {', '.join(picks)}; "
            f"chosen {chosen} (shipped default {SqliteStore.coarse})"
        )
        store.coarse = SqliteStore.coarse
        for name, qs in sets.items():
            rec = _recall(store, model, qv[name], exact[name])
            hybrid = _times(lambda q: r.search(q, tenant="default", k=10), qs)
            store.exact_limit = 10**9
            brute = _times(lambda q: r.search(q, tenant="default", k=10, mode="vector"), qs)
            brute_h = _times(lambda q: r.search(q, tenant="default", k=10), qs)
            store.exact_limit = 0
            vec = _times(lambda q: r.search(q, tenant="default", k=10, mode="vector"), qs)
            kw = _times(lambda q: store.keyword_search("default", q, 100, Filters()), qs)
            fts, same = _fts5(store, qs)
            role = "chose coarse" if name == "chroma" else "reported"
            for path, t, recall_s in [
                (
                    "hybrid: bits + re-rank, BM25 index (default)",
                    hybrid,
                    f"{rec:.3f} (vector part)",
                ),
                ("hybrid: brute-force vec0, BM25 index", brute_h, "1.000 (vector part)"),
                ("vector: bits + re-rank", vec, f"{rec:.3f}"),
                ("vector: brute-force vec0 (baseline)", brute, "1.000"),
                ("keyword: BM25 index, top 100", kw, f"{same:.3f} of FTS5's top 10"),
                ("keyword: FTS5 bm25(), top 100 (baseline)", fts, "—"),
            ]:
                table.add_row(
                    "SQLite",
                    path,
                    f"{name} ({role})",
                    f"{n:,}",
                    f"{np.percentile(t, 50):.2f}",
                    f"{np.percentile(t, 99):.2f}",
                    recall_s,
                )
            verdicts.append((f"SQLite hybrid, {name}", float(np.percentile(hybrid, 99)), load))
        store.close()
        load.__exit__(None, None, None)
        console.print(f"SQLite part: {load.line()}")
        if not args.no_postgres:
            _postgres(Path(tmp), args, sets, qv, table, verdicts, console)
    console.print(table)
    for name, p99, during in verdicts:
        ok = p99 <= TARGET_P99_MS
        v = "busy: not judged" if during.busy else ("PASS" if ok else "MISS")
        console.print(f"{name}: p99 {p99:.2f} ms (target ≤ {TARGET_P99_MS} ms): {v}")


def _postgres(
    tmp: Path, args: Any, sets: Any, qv: Any, table: Table, verdicts: list, console: Console
) -> None:
    import logging
    import warnings

    import pgserver

    logging.getLogger("pgserver").setLevel(logging.WARNING)

    from fleetpilot.rag.postgres import PostgresStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
    load = OtherLoad(ours=("postgres",))  # the server's work is the benchmark's
    try:
        load.__enter__()
        store = PostgresStore(server.get_uri())
        t0 = time.perf_counter()
        build(tmp / "docs-pg", store, args.files, args.paragraphs)
        n = store.stats().chunks
        console.print(
            f"Postgres: built {n:,} chunks (HNSW maintained on insert)"
            f" in {time.perf_counter() - t0:.0f} s"
        )
        with store._write() as cur:  # the baseline's full-text index, beside the store's
            cur.execute(
                "alter table rag_chunks add column tsv tsvector"
                " generated always as (to_tsvector('english', text)) stored"
            )
            cur.execute("create index rag_chunks_tsv on rag_chunks using gin(tsv)")
            cur.execute("analyze rag_chunks")
        model = store.active_model()
        r = Retriever(store)
        for name, qs in sets.items():
            exact = [store.exact_search("default", model, v, 10) for v in qv[name]]
            rec = _recall(store, model, qv[name], exact)
            hybrid = _times(lambda q: r.search(q, tenant="default", k=10), qs)
            vec = _times(lambda q: r.search(q, tenant="default", k=10, mode="vector"), qs)
            few = qs[: args.baseline_queries]  # the baselines scan: a sample of the queries
            brute = _times(lambda q: store.exact_search("default", model, wl_query(q), 10), few)
            kw = _times(lambda q: store.keyword_search("default", q, 100, Filters()), qs)
            ts = _times(lambda q: _ts_rank(store, q), few)
            for path, t, recall_s in [
                ("hybrid: HNSW + BM25 index (default)", hybrid, f"{rec:.3f} (vector part)"),
                ("vector: HNSW, ef_search 100", vec, f"{rec:.3f}"),
                (f"vector: exact scan (baseline, {len(few)} queries)", brute, "1.000"),
                ("keyword: BM25 index, top 100", kw, "—"),
                (f"keyword: ts_rank_cd + GIN, top 100 (baseline, {len(few)} queries)", ts, "—"),
            ]:
                table.add_row(
                    "Postgres",
                    path,
                    name,
                    f"{n:,}",
                    f"{np.percentile(t, 50):.2f}",
                    f"{np.percentile(t, 99):.2f}",
                    recall_s,
                )
            verdicts.append((f"Postgres hybrid, {name}", float(np.percentile(hybrid, 99)), load))
        store.close()
        load.__exit__(None, None, None)
        console.print(f"Postgres part: {load.line()}")
    finally:
        server.cleanup()


def _fts5(store: SqliteStore, qs: list[str]) -> tuple[np.ndarray, float]:
    """The baseline: FTS5's own BM25 over the same chunks (an FTS5 table built beside the
    store for this run, as the store kept one before), its latency for the top 100, and the
    share of its top 10 that the store's index also returns (the two differ in idf's form
    and in counting per tenant)."""
    with store._write():
        store._db.execute(
            "create virtual table if not exists fts_baseline using fts5(text, content='',"
            " contentless_delete=1, tokenize='porter unicode61 remove_diacritics 2');"
            "insert into fts_baseline(rowid, text) select id, text from chunks"
            " where not exists (select 1 from fts_baseline_docsize limit 1)"
        )

    def search(q: str, k: int) -> list[int]:
        words = query_terms(q)
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        sql = (
            "select rowid from fts_baseline where fts_baseline match ?"
            " order by bm25(fts_baseline) limit ?"
        )
        return [r[0] for r in store._rows(sql, (match, k))]

    times = _times(lambda q: search(q, 100), qs)
    same = [
        len({i for i, _ in store.keyword_search("default", q, 10, Filters())} & set(b))
        / max(1, len(b))
        for q in qs
        if (b := search(q, 10))
    ]
    return times, float(np.mean(same))


def _ts_rank(store: Any, q: str) -> list[int]:
    """The Postgres baseline: ``ts_rank_cd`` over every chunk matching any query word."""
    lexemes = [r[0] for r in store._rows(
        "select unnest(tsvector_to_array(to_tsvector('english', %s)))", (q,))]  # fmt: skip
    if not lexemes:
        return []
    tsq = " | ".join("'" + w.replace("'", "''").replace("\\", "\\\\") + "'" for w in lexemes)
    rows = store._rows(
        "select id, ts_rank_cd(tsv, to_tsquery('simple', %s)) as r from rag_chunks"
        " where tenant = 'default' and tsv @@ to_tsquery('simple', %s) order by r desc limit 100",
        (tsq, tsq),
    )
    return [r[0] for r in rows]


def wl_query(q: str) -> np.ndarray:
    return embedder("wordllama").query(q)


if __name__ == "__main__":
    main()
