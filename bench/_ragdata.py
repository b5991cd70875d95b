"""A large document tree for the RAG benchmarks, built from the shared sets' own sentences
(Chroma's chunking corpora and Cranfield's abstracts), so chunks and their vectors look like
real text; seeded, so every run builds the same tree."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from fleetpilot.rag.evaluate import load_beir, load_chunking_set

__all__ = ["CHUNK_TOKENS", "data_root", "queries", "sentences", "write_tree"]

CHUNK_TOKENS = 96  # the benchmark store's chunk size: one paragraph, about one chunk


def data_root() -> Path:
    root = Path(os.environ.get("FLEETPILOT_DATA", Path(__file__).parents[2] / "shared" / "data"))
    if not (root / "retrieval").is_dir():
        raise SystemExit(f"no retrieval data under {root}: set FLEETPILOT_DATA")
    return root / "retrieval"


def sentences() -> list[str]:
    root = data_root()
    texts = list(load_chunking_set(root / "chroma_chunking_eval").corpora.values())
    texts += list(load_beir(root / "cranfield" / "beir").corpus.values())
    out = []
    for t in texts:
        for s in re.split(r"(?<=[.!?])\s+", t):
            s = " ".join(s.split())
            if 30 <= len(s) <= 400:
                out.append(s)
    return out


def queries() -> dict[str, list[str]]:
    """Two query sets: Chroma's questions (to choose knobs on) and Cranfield's (to report)."""
    root = data_root()
    chroma = [q.text for q in load_chunking_set(root / "chroma_chunking_eval").questions]
    cran = list(load_beir(root / "cranfield" / "beir").queries.values())
    return {"chroma": chroma, "cranfield": cran}


def write_tree(folder: Path, files: int, paragraphs: int, seed: int = 7) -> Path:
    """``files`` Markdown files of ``paragraphs`` paragraphs (three sentences each)."""
    pool = sentences()
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        paras = [" ".join(rng.choice(pool) for _ in range(3)) for _ in range(paragraphs)]
        sub = folder / f"part{f % 20:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"doc{f:05d}.md").write_text(f"# Document {f}\n\n" + "\n\n".join(paras))
    return folder


def build(
    folder: Path, store: object, files: int, paragraphs: int, spec: str = "wordllama"
) -> object:
    """Write the tree and ingest it into ``store``; the indexer's report."""
    from fleetpilot.rag.chunking import chunker
    from fleetpilot.rag.embed import embedder
    from fleetpilot.rag.indexer import Indexer

    tree = write_tree(folder, files, paragraphs)
    ix = Indexer(store, embedder(spec), chunker("recursive", size=CHUNK_TOKENS))  # type: ignore[arg-type]
    return ix.ingest(tree)
