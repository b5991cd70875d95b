"""Words for the keyword index, shared by both stores: FTS5's Porter tokenizer (Unicode
6.1 word breaks, case and diacritics folded, then Porter stemming), called from Python
through apsw, so documents and queries are cut the same way whichever store holds them."""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

import apsw

__all__ = ["document_terms", "keyword_words", "query_terms"]

# Words too common to rank by; dropping them from a query keeps an OR over its words from
# scoring most of the corpus (FTS5 scores every row that matches any word).
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)
_WORD = re.compile(r"\w+")


def keyword_words(text: str) -> list[str]:
    """A query's words worth matching, once each (all of them if every one is common)."""
    words = _WORD.findall(text.lower())
    kept = [w for w in words if w not in _STOPWORDS] or words
    return list(dict.fromkeys(kept))


_LOCK = threading.Lock()


@functools.cache
def _tokenizer() -> Any:
    db = apsw.Connection(":memory:")
    return db.fts5_tokenizer("porter", ["unicode61", "remove_diacritics", "2"])


def document_terms(text: str) -> list[str]:
    """A text's terms in order, repeats kept (their counts are the term frequencies)."""
    with _LOCK:  # one tokenizer object, shared by the gateway's worker threads
        terms: list[str] = _tokenizer()(
            text.encode(),
            apsw.FTS5_TOKENIZE_DOCUMENT,
            None,
            include_offsets=False,
            include_colocated=False,
        )
        return terms


def query_terms(text: str) -> list[str]:
    """A query's terms worth matching, once each: its words less the common ones
    (:func:`keyword_words`), stemmed as documents are."""
    words = keyword_words(text)
    if not words:
        return []
    return list(dict.fromkeys(document_terms(" ".join(words))))
