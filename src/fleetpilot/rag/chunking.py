"""Cutting a document into chunks, each a character span of its text, sized in tokens.

Three strategies, chosen by name (:func:`chunker`):

- ``fixed``: windows of ``size`` tokens that overlap by ``overlap`` tokens; blind to
  structure, the baseline;
- ``recursive``: split at the coarsest boundary that makes pieces fit — headings, then
  paragraphs, lines, sentences, words — and merge neighbours back up to ``size``, so a
  chunk ends where the text's own structure does;
- ``semantic``: sentences grouped while adjacent ones stay on topic; a new chunk starts where
  the embedding similarity of neighbouring sentences falls into its document's lowest
  ``1 - keep`` share (and always before ``size`` would be passed).

Chunks are spans, not copies, so a retrieved chunk can cite where it came from and the
chunking benchmark can score overlap with reference spans character by character.  Which
strategy is the default is decided by ``bench/rag_chunking.py`` (see README).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fleetpilot.rag.documents import content_hash
from fleetpilot.rag.tokens import Tokens, tokenize

if TYPE_CHECKING:
    from fleetpilot.rag.embed import Embedder

__all__ = ["STRATEGIES", "Chunk", "Chunker", "chunker"]


@dataclass(frozen=True, slots=True)
class Chunk:
    start: int  # a character span of the document's text
    end: int
    text: str
    tokens: int

    @property
    def hash(self) -> str:
        return content_hash(self.text)


Split = Callable[[str, Tokens], list[tuple[int, int]]]

# Coarsest first.  Each pattern matches the gap between two pieces; a heading's gap ends
# before the '#', so the heading starts its piece.
_SEPARATORS = (
    re.compile(r"\n+(?=#{1,6}\s)"),
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?;:])\s+"),
    re.compile(r"\s+"),
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n[ \t]*\n\s*")


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _cut(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    pieces, at = [], start
    for m in pattern.finditer(text, start, end):
        if m.start() > at:
            pieces.append((at, m.start()))
        at = m.end()
    if at < end:
        pieces.append((at, end))
    return pieces


def _windows(tokens: Tokens, start: int, end: int, size: int, step: int) -> list[tuple[int, int]]:
    """Token windows over ``[start, end)``: ``size`` tokens, a new one every ``step``."""
    import bisect

    lo = bisect.bisect_left(tokens.starts, start)
    hi = bisect.bisect_left(tokens.starts, end)
    spans = []
    for i in range(lo, hi, step):
        j = min(i + size, hi)
        spans.append((tokens.starts[i], min(tokens.ends[j - 1], end)))
        if j == hi:
            break
    return spans


def fixed(size: int, overlap: int) -> Split:
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be at least 0 and under the size ({size}); got {overlap}")

    def split(text: str, tokens: Tokens) -> list[tuple[int, int]]:
        return _windows(tokens, 0, len(text), size, size - overlap)

    return split


def recursive(size: int) -> Split:
    def pieces(
        text: str, tokens: Tokens, start: int, end: int, level: int
    ) -> list[tuple[int, int]]:
        if tokens.between(start, end) <= size:
            return [(start, end)]
        if level == len(_SEPARATORS):
            return _windows(tokens, start, end, size, size)
        out: list[tuple[int, int]] = []
        for s, e in _cut(text, start, end, _SEPARATORS[level]):
            out.extend(pieces(text, tokens, s, e, level + 1))
        return _merge(out, tokens, size)

    def split(text: str, tokens: Tokens) -> list[tuple[int, int]]:
        return pieces(text, tokens, 0, len(text), 0)

    return split


def _merge(spans: list[tuple[int, int]], tokens: Tokens, size: int) -> list[tuple[int, int]]:
    """Neighbouring pieces joined while the joined span stays within ``size`` tokens."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and tokens.between(out[-1][0], e) <= size:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def semantic(size: int, embedder: Embedder, keep: float = 0.8) -> Split:
    if not 0.0 < keep < 1.0:
        raise ValueError(f"keep must be between 0 and 1; got {keep}")

    def split(text: str, tokens: Tokens) -> list[tuple[int, int]]:
        sentences = [  # an over-long sentence is cut into windows
            p for s, e in _cut(text, 0, len(text), _SENTENCE) for p in _fit(tokens, s, e, size)
        ]
        if len(sentences) < 3:
            return _merge(sentences, tokens, size)
        vectors = embedder.documents([text[s:e] for s, e in sentences])
        similarity = np.einsum("ij,ij->i", vectors[:-1], vectors[1:])
        cut_below = float(np.quantile(similarity, 1.0 - keep))
        out = [sentences[0]]
        for (s, e), sim in zip(sentences[1:], similarity, strict=True):
            if sim > cut_below and tokens.between(out[-1][0], e) <= size:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out

    return split


def _fit(tokens: Tokens, start: int, end: int, size: int) -> list[tuple[int, int]]:
    if tokens.between(start, end) <= size:
        return [(start, end)]
    return _windows(tokens, start, end, size, size)


STRATEGIES = ("fixed", "recursive", "semantic")
DEFAULT_STRATEGY = "recursive"  # the winner of bench/rag_chunking.py (see README)
DEFAULT_SIZE = 128


@dataclass(frozen=True, slots=True)
class Chunker:
    """A strategy with its settings; ``spec`` names both, so a store knows when documents
    were cut differently and must be cut again."""

    spec: str
    split: Split

    def __call__(self, text: str) -> list[Chunk]:
        tokens = tokenize(text)
        chunks = []
        for s, e in self.split(text, tokens):
            s, e = _trim(text, s, e)
            if e > s:
                chunks.append(Chunk(s, e, text[s:e], tokens.between(s, e)))
        return chunks


def chunker(
    strategy: str = DEFAULT_STRATEGY,
    *,
    size: int = DEFAULT_SIZE,
    overlap: int | None = None,
    embedder: Embedder | None = None,
    keep: float = 0.8,
) -> Chunker:
    if size < 8:
        raise ValueError(f"a chunk size under 8 tokens is not useful; got {size}")
    if strategy == "fixed":
        ov = size // 8 if overlap is None else overlap
        return Chunker(f"fixed/{size}/{ov}", fixed(size, ov))
    if strategy == "recursive":
        return Chunker(f"recursive/{size}", recursive(size))
    if strategy == "semantic":
        if embedder is None:
            raise ValueError("the semantic strategy needs an embedder")
        return Chunker(f"semantic/{size}/{keep:g}/{embedder.name}", semantic(size, embedder, keep))
    raise ValueError(f"unknown chunking strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
