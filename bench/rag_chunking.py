"""Chunking strategies at an equal context budget, on Chroma's token-level evaluation set.

Each strategy cuts the five corpora (one document each) into a store of its own; each
question is searched (hybrid, the default embedder) within its corpus, and chunks are taken
best first until ``--budget`` tokens are filled — the last one cut to fit — so every
strategy hands the model the same amount of text.  Scores are over characters: recall (share
of the reference spans covered), precision (share of the context that is reference) and
IoU.  Smaller chunks would otherwise win simply by being more of them.

The default strategy is chosen on wikitexts, pubmed and chatlogs (by recall, then IoU) and
reported on finance and state_of_the_union, which did not choose it.

    .venv/bin/python bench/rag_chunking.py [--budget 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _machine import OtherLoad
from _ragdata import data_root
from fleetpilot.rag.chunking import chunker
from fleetpilot.rag.documents import Document
from fleetpilot.rag.embed import embedder
from fleetpilot.rag.evaluate import load_chunking_set, span_scores
from fleetpilot.rag.indexer import Indexer
from fleetpilot.rag.search import Retriever
from fleetpilot.rag.sqlite import SqliteStore
from fleetpilot.rag.store import Filters
from fleetpilot.rag.tokens import tokenize

CHOOSE = ("wikitexts", "pubmed", "chatlogs")
STRATEGIES = (
    ("fixed", 64, 8), ("fixed", 128, 16), ("fixed", 256, 32), ("fixed", 512, 64),
    ("recursive", 64, None), ("recursive", 128, None), ("recursive", 256, None),
    ("recursive", 512, None),
    ("semantic", 64, None), ("semantic", 128, None), ("semantic", 256, None),
    ("semantic", 512, None),
)  # fmt: skip


def _context(hits: list, budget: int) -> list[tuple[int, int]]:
    spans, left = [], budget
    for h in hits:
        toks = tokenize(h.text)
        if len(toks) <= left:
            spans.append((h.start, h.end))
            left -= len(toks)
        else:
            if left > 0:
                spans.append((h.start, h.start + toks.ends[left - 1]))
            break
    return spans


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget", type=int, default=512, help="context tokens per question")
    ap.add_argument("--mode", default="hybrid")
    args = ap.parse_args()
    data = load_chunking_set(data_root() / "chroma_chunking_eval")
    wl = embedder("wordllama")
    console = Console(width=140)
    results: dict[str, dict[str, tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, OtherLoad() as load:
        for strategy, size, overlap in STRATEGIES:
            name = f"{strategy} {size}" + (f" (overlap {overlap})" if overlap else "")
            store = SqliteStore(Path(tmp) / f"{strategy}-{size}.db")
            cut = chunker(strategy, size=size, overlap=overlap, embedder=wl)
            t0 = time.perf_counter()
            Indexer(store, wl, cut).add(Document(cid, text) for cid, text in data.corpora.items())
            r = Retriever(store)
            per: dict[str, list[tuple[float, float, float]]] = {}
            for q in data.questions:
                hits = r.search(
                    q.text,
                    tenant="default",
                    k=60,
                    mode=args.mode,
                    filters=Filters(doc_ids=(q.corpus,)),
                )
                per.setdefault(q.corpus, []).append(
                    span_scores(_context(hits, args.budget), q.spans)
                )
            results[name] = {c: tuple(np.mean(v, axis=0)) for c, v in per.items()}  # type: ignore[misc]
            chunks = store.stats().chunks
            store.close()
            console.print(f"{name}: {chunks} chunks, {time.perf_counter() - t0:.1f} s")
    corpora = sorted(data.corpora)

    def mean(name: str, which: tuple[str, ...]) -> tuple[float, float, float]:
        return tuple(np.mean([results[name][c] for c in which], axis=0))  # type: ignore[return-value]

    report = tuple(c for c in corpora if c not in CHOOSE)
    table = Table(
        title=f"chunking at a {args.budget}-token context ({args.mode} search); "
        "recall / precision / IoU"
    )
    table.add_column("strategy")
    for c in corpora:
        table.add_column(c + (" (choose)" if c in CHOOSE else " (report)"))
    table.add_column("choose sets")
    table.add_column("report sets")
    for name in results:
        cells = [
            f"{results[name][c][0]:.3f} / {results[name][c][1]:.3f} / {results[name][c][2]:.3f}"
            for c in corpora
        ]
        ch, rp = mean(name, CHOOSE), mean(name, report)
        table.add_row(name, *cells, f"{ch[0]:.3f} / {ch[2]:.3f}", f"{rp[0]:.3f} / {rp[2]:.3f}")
    console.print(table)
    winner = max(results, key=lambda n: (round(mean(n, CHOOSE)[0], 3), mean(n, CHOOSE)[2]))
    best_report = max(results, key=lambda n: mean(n, report)[0])
    console.print(
        f"chosen on {', '.join(CHOOSE)}: {winner}; on the report sets it scores recall "
        f"{mean(winner, report)[0]:.3f} (best there: {best_report}, "
        f"{mean(best_report, report)[0]:.3f})"
    )
    console.print(f"other processes: {load.cores:.2f} cores (these figures do not depend on it)")


if __name__ == "__main__":
    main()
