"""Retrieval quality on Cranfield: nDCG@10 and recall@100 for BM25 (the stores' own index),
vector search with each offline embedder, and hybrid (reciprocal rank fusion) over each.

Every abstract is one document in a fresh SQLite store per embedder, cut into chunks of up
to 512 tokens (almost every abstract is one chunk; a document ranks where its best chunk
does): relevance is judged per document, and chunking is measured elsewhere.
The hybrid weights (keyword weight, with vector fixed at 1, and the fusion constant) are
chosen on the even-numbered queries and reported on the odd ones; the table also gives all
225.  The issue's target: hybrid beats the best single method on both figures.

    .venv/bin/python bench/rag_quality.py [--data $FLEETPILOT_DATA/retrieval/cranfield/beir]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _machine import OtherLoad
from fleetpilot.rag.chunking import chunker
from fleetpilot.rag.documents import Document
from fleetpilot.rag.embed import embedder
from fleetpilot.rag.evaluate import Beir, load_beir, ndcg, recall
from fleetpilot.rag.indexer import Indexer
from fleetpilot.rag.search import Retriever, Weights
from fleetpilot.rag.sqlite import SqliteStore

DEFAULT = Weights()
KEYWORD_WEIGHTS = (0.5, 0.75, 1.0, 1.5, 2.0)
RRF_KS = (10, 30, 60, 100)


def _docs_ranked(hits: list, k: int) -> list[str]:
    return list(dict.fromkeys(h.doc_id for h in hits))[:k]


def _score(runs: dict[str, list[str]], data: Beir, qids: list[str]) -> tuple[float, float]:
    n = [ndcg(runs[q], data.qrels.get(q, {}), 10) for q in qids]
    r = [recall(runs[q], data.qrels.get(q, {}), 100) for q in qids]
    return sum(n) / len(n), sum(r) / len(r)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = Path(os.environ.get("FLEETPILOT_DATA", "../shared/data")) / "retrieval/cranfield/beir"
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--embedders", default="wordllama,e5")
    args = ap.parse_args()
    data = load_beir(args.data)
    qids = [q for q in data.queries if q in data.qrels]
    tune = [q for q in qids if int(q) % 2 == 0]
    report = [q for q in qids if int(q) % 2 == 1]
    console = Console(width=120)
    rows: list[tuple[str, str, tuple[float, float], tuple[float, float], tuple[float, float]]] = []
    with OtherLoad() as load, tempfile.TemporaryDirectory() as tmp:
        for spec in args.embedders.split(","):
            model = embedder(spec)
            store = SqliteStore(Path(tmp) / f"{spec}.db")
            t0 = time.perf_counter()
            # one chunk an abstract: this measures search methods, not chunking (qrels are
            # per document; bench/rag_chunking.py measures chunking)
            Indexer(store, model, chunker(size=512)).add(
                Document(i, t) for i, t in data.corpus.items()
            )
            console.print(
                f"indexed {len(data.corpus)} abstracts with {model.name}"
                f" in {time.perf_counter() - t0:.1f} s"
            )
            r = Retriever(store)

            def run(
                mode: str, w: Weights = DEFAULT, rrf_k: int = 60, r: Retriever = r
            ) -> dict[str, list[str]]:
                r.rrf_k = rrf_k
                return {
                    q: _docs_ranked(
                        r.search(data.queries[q], tenant="default", k=150, mode=mode, weights=w),
                        100,
                    )
                    for q in qids
                }

            if not any(name == "BM25 (fleetpilot.rag.bm25)" for name, *_ in rows):
                kw = run("keyword")
                rows.append(
                    (
                        "BM25 (fleetpilot.rag.bm25)",
                        "—",
                        _score(kw, data, tune),
                        _score(kw, data, report),
                        _score(kw, data, qids),
                    )
                )
            vec = run("vector")
            rows.append(
                (
                    f"vector {spec}",
                    "—",
                    _score(vec, data, tune),
                    _score(vec, data, report),
                    _score(vec, data, qids),
                )
            )
            best, best_runs, best_sum = "", {}, -1.0
            for wk in KEYWORD_WEIGHTS:
                for rk in RRF_KS:
                    runs = run("hybrid", Weights(1.0, wk), rk)
                    n, rc = _score(runs, data, tune)
                    if n + rc > best_sum:
                        best, best_runs, best_sum = f"keyword {wk:g}, k {rk}", runs, n + rc
            default_runs = run("hybrid")
            rows.append(
                (
                    f"hybrid {spec} (default 1/1, k 60)",
                    "—",
                    _score(default_runs, data, tune),
                    _score(default_runs, data, report),
                    _score(default_runs, data, qids),
                )
            )
            rows.append(
                (
                    f"hybrid {spec} (tuned)",
                    best,
                    _score(best_runs, data, tune),
                    _score(best_runs, data, report),
                    _score(best_runs, data, qids),
                )
            )
            store.close()
    table = Table(
        title=f"Cranfield ({len(qids)} queries; tuned on {len(tune)} even, "
        f"reported on {len(report)} odd)"
    )
    for col in (
        "method",
        "chosen on even",
        "nDCG@10 even",
        "R@100 even",
        "nDCG@10 odd",
        "R@100 odd",
        "nDCG@10 all",
        "R@100 all",
    ):
        table.add_column(col)
    for name, chosen, t, o, a in rows:
        table.add_row(name, chosen, *(f"{x:.3f}" for x in (*t, *o, *a)))
    console.print(table)
    singles = [a for name, _, _, _, a in rows if not name.startswith("hybrid")]
    best_n, best_r = max(s[0] for s in singles), max(s[1] for s in singles)
    for name, _, _, _, a in rows:
        if name.startswith("hybrid"):
            ok = a[0] > best_n and a[1] > best_r
            console.print(
                f"{name}: all queries {a[0]:.3f} / {a[1]:.3f} vs best single "
                f"{best_n:.3f} / {best_r:.3f}: {'PASS' if ok else 'MISS'}"
            )
    console.print(f"other processes: {load.cores:.2f} cores (quality figures do not depend on it)")


if __name__ == "__main__":
    main()
