"""Freshness at scale: a store of about 100,000 chunks (one directory tree), one document
changed, the directory re-ingested — how long it takes, and how many chunks were embedded.

Rows, all measured in this run on the same store:
- the build (every file new: the cost a naive re-index pays every time);
- a re-ingest with nothing changed (the floor: a ``stat`` of every file);
- one paragraph of one document edited, then re-ingested (the target: ≤ 1 s, and only that
  document's changed chunks embedded);
- one document deleted; one added.

    .venv/bin/python bench/rag_freshness.py [--files 2000 --paragraphs 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _machine import OtherLoad
from _ragdata import CHUNK_TOKENS, write_tree
from fleetpilot.rag.chunking import chunker
from fleetpilot.rag.embed import embedder
from fleetpilot.rag.indexer import Indexer, Report
from fleetpilot.rag.sqlite import SqliteStore

TARGET_S = 1.0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--paragraphs", type=int, default=50)
    ap.add_argument("--embedder", default="wordllama")
    args = ap.parse_args()
    console = Console(width=120)
    rows: list[tuple[str, Report]] = []
    with tempfile.TemporaryDirectory() as tmp, OtherLoad() as load:
        tree = write_tree(Path(tmp) / "docs", args.files, args.paragraphs)
        store = SqliteStore(Path(tmp) / "rag.db")
        ix = Indexer(store, embedder(args.embedder), chunker("recursive", size=CHUNK_TOKENS))
        rows.append(("build (every file new)", ix.ingest(tree)))
        chunks = store.stats().chunks
        rows.append(("nothing changed", ix.ingest(tree)))
        target = tree / "part07" / "doc00007.md"
        text = target.read_text().split("\n\n")
        text[5] = "An edited paragraph: the wing was tested again at a higher Reynolds number."
        target.write_text("\n\n".join(text))
        doc_chunks = sum(1 for _ in store.vectors_of("default", "part07/doc00007.md", ix.model))
        edit = ix.ingest(tree)
        rows.append(("one paragraph of one document edited", edit))
        (tree / "part03" / "doc00003.md").unlink()
        rows.append(("one document deleted", ix.ingest(tree)))
        (tree / "part03" / "new.md").write_text("# New\n\n" + "\n\n".join(text))
        rows.append(("one document added", ix.ingest(tree)))
        store.close()
    table = Table(
        title=f"re-ingest of a {args.files}-file tree, {chunks:,} chunks ({args.embedder})"
    )
    for col in (
        "case",
        "seconds",
        "added",
        "changed",
        "unchanged",
        "deleted",
        "chunks embedded",
        "chunks reused",
    ):
        table.add_column(col, justify="right")
    for name, r in rows:
        table.add_row(
            name,
            f"{r.seconds:.3f}",
            *(
                str(x)
                for x in (
                    r.added,
                    r.changed,
                    r.unchanged,
                    r.deleted,
                    r.chunks_embedded,
                    r.chunks_reused,
                )
            ),
        )
    console.print(table)
    ok = edit.seconds <= TARGET_S and edit.chunks_embedded < doc_chunks
    verdict = "busy: not judged" if load.busy else ("PASS" if ok else "MISS")
    console.print(
        f"edit: {edit.seconds:.3f} s (target ≤ {TARGET_S} s), {edit.chunks_embedded} of the "
        "document's "
        f"{doc_chunks} chunks embedded, vs {rows[0][1].seconds:.1f} s to build: {verdict}"
    )
    console.print(load.line())


if __name__ == "__main__":
    main()
