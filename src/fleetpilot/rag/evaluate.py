"""Retrieval and chunking yardsticks, and the loaders of the shared evaluation sets.

- ranked retrieval (BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``):
  nDCG@k with graded relevance (exponential gain, as BEIR and TREC tools compute it) and
  recall@k;
- chunking (Chroma's token-level set: corpora with reference character spans per
  question): what share of the reference characters the retrieved context covers
  (recall), what share of the context is reference (precision) and their IoU — at a
  fixed context budget in tokens, since smaller chunks otherwise win by being more.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Beir", "ChunkingSet", "Question", "load_beir", "load_chunking_set", "ndcg", "recall",
    "span_scores",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Beir:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> document id -> grade (> 0 relevant)


def load_beir(folder: Path) -> Beir:
    folder = Path(folder)

    def rows(name: str) -> Iterable[dict[str, str]]:
        with (folder / name).open(encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())

    corpus = {
        r["_id"]: " ".join(p for p in (r.get("title", ""), r["text"]) if p)
        for r in rows("corpus.jsonl")
    }
    queries = {r["_id"]: r["text"] for r in rows("queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        for row in reader:
            grade = int(row[2])
            if grade > 0:
                qrels.setdefault(row[0], {})[row[1]] = grade
    return Beir(corpus, queries, qrels)


def ndcg(ranked: Sequence[str], grades: dict[str, int], k: int = 10) -> float:
    dcg = sum((2 ** grades.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall(ranked: Sequence[str], relevant: Iterable[str], k: int = 100) -> float:
    rel = set(relevant)
    return len(rel.intersection(ranked[:k])) / len(rel) if rel else 0.0


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    corpus: str
    spans: tuple[tuple[int, int], ...]  # reference character spans in the corpus text


@dataclass(frozen=True, slots=True)
class ChunkingSet:
    corpora: dict[str, str]
    questions: list[Question]


def load_chunking_set(folder: Path) -> ChunkingSet:
    folder = Path(folder)
    corpora = {
        p.stem: p.read_text(encoding="utf-8") for p in sorted((folder / "corpora").glob("*.md"))
    }
    questions = []
    with (folder / "questions_df.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            refs = json.loads(row["references"])
            spans = tuple((int(r["start_index"]), int(r["end_index"])) for r in refs)
            questions.append(Question(row["question"], row["corpus_id"], spans))
    return ChunkingSet(corpora, questions)


def _union(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        elif e > s:
            out.append((s, e))
    return out


def _length(spans: list[tuple[int, int]]) -> int:
    return sum(e - s for s, e in spans)


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    total, i, j = 0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def span_scores(
    retrieved: Iterable[tuple[int, int]], reference: Iterable[tuple[int, int]]
) -> tuple[float, float, float]:
    """(recall, precision, IoU) of retrieved character spans against reference spans."""
    got, want = _union(retrieved), _union(reference)
    hit = _overlap(got, want)
    union = _length(got) + _length(want) - hit
    return (
        hit / _length(want) if want else 0.0,
        hit / _length(got) if got else 0.0,
        hit / union if union else 0.0,
    )
