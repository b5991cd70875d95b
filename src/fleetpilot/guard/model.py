"""The trained layer: a linear model over hashed character n-grams and the signature hits.

Why this model: it runs in the request path.  Character 3–5-grams of the cleaned, lowercased
text are hashed into 2^18 buckets with numpy (no Python loop per character), so a
16,000-character prompt is scored in a fraction of a millisecond, and n-grams survive what
word features do not: misspellings, glued words, partial leetspeak, any language.  The
signature hits and the text's length enter as a few dense features, so the model can weigh
them, and the evaluation's length-only baseline shows what the n-grams add.

The n-gram part is divided by the square root of the n-gram count, so a long honest text is
not an attack for being long.  Weights ship as ``model.npz`` beside this file (float16; see
MODEL.md there for the data it was trained on and their licences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.guard.signatures import SIGNATURES, Hit

__all__ = ["BITS", "DENSE", "Model", "dense_features", "ngram_buckets"]

BITS = 18
ORDERS = (3, 4, 5)
MAX_BYTES = 32_768  # beyond this, the first and last halves are read (an attack has to be seen)
DENSE = ("log_length", "non_ascii", "symbols", "odd_tokens", *(f"sig:{s.name}" for s in SIGNATURES))
WINDOW = 512  # bytes: an attack pasted into a long document is scored on its own, too
STRIDE = 256
_ALNUM = np.zeros(256, dtype=bool)
_ALNUM[[*range(48, 58), *range(65, 91), *range(97, 123), *range(128, 256)]] = True
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 13, 32]] = True
_PRIME = np.uint32(16777619)  # FNV-1's
_MIX = np.uint32(2654435761)  # Knuth's multiplicative hash


def _bytes(text: str) -> np.ndarray:
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_BYTES:
        half = MAX_BYTES // 2
        raw = raw[:half] + b"\x00" + raw[-half:]
    return np.frombuffer(raw, dtype=np.uint8)


def ngram_buckets(text: str, raw: np.ndarray | None = None) -> np.ndarray:
    """The bucket of every character n-gram of ``text`` (lowercased UTF-8 bytes), repeats
    kept: the model counts them."""
    b = _bytes(text.lower()).astype(np.uint32) if raw is None else raw.astype(np.uint32)
    parts = []
    with np.errstate(over="ignore"):
        h = np.zeros(len(b), dtype=np.uint32)
        for k in range(max(ORDERS)):
            n = k + 1
            if len(b) < n:
                break
            h = h[: len(b) - k] * _PRIME + b[k:] if k else b.copy()
            if n in ORDERS:
                parts.append(((h + np.uint32(n)) * _MIX) >> np.uint32(32 - BITS))
    if not parts:
        return np.zeros(0, dtype=np.uint32)
    return np.concatenate(parts)


def dense_features(text: str, hits: list[Hit], raw: np.ndarray | None = None) -> np.ndarray:
    """Length, the share of non-ASCII bytes, of symbols, and of symbol runs glued to a word
    (adversarial suffixes such as ``giving**ONE please? revert with "\\!--Two``), then one
    flag per signature that fired on the clean text."""
    names = {h.name for h in hits if h.how == "clean"}
    b = _bytes(text) if raw is None else raw
    n = max(len(b), 1)
    alnum, space = np.take(_ALNUM, b), np.take(_SPACE, b)
    symbol = ~(alnum | space)
    odd = int(np.count_nonzero(alnum[:-2] & symbol[1:-1] & symbol[2:])) if n > 2 else 0
    tokens = int(np.count_nonzero(space)) + 1
    return np.array(
        [
            math.log1p(len(text)) / 10.0,
            float(np.count_nonzero(b >= 128)) / n,
            float(np.count_nonzero(symbol)) / n,
            odd / tokens,
            *(float(s.name in names) for s in SIGNATURES),
        ],
        dtype=np.float64,
    )


def _windows(w: np.ndarray, size: int) -> float:
    """The highest window score: the n-grams of every order that start in the window,
    summed, over the square root of their number.  ``w`` holds each order's n-grams in turn
    (as :func:`ngram_buckets` returns them), ``size`` - n + 1 of order n."""
    per_position = np.zeros(size, dtype=np.float64)
    at = 0
    for n in ORDERS:
        length = size - n + 1
        per_position[:length] += w[at : at + length]
        at += length
    c = np.concatenate([[0.0], np.cumsum(per_position)])
    starts = np.arange(0, size - WINDOW + 1, STRIDE)
    ends = starts + WINDOW
    # every order has an n-gram at every position of a window but the last few of the text
    return float(((c[ends] - c[starts]) / math.sqrt(WINDOW * len(ORDERS))).max())


@dataclass(slots=True)
class Model:
    ngrams: np.ndarray  # float32, 2**BITS
    dense: np.ndarray  # float64, len(DENSE)
    bias: float
    threshold: float  # a score at or above it is an attack (chosen on training data)
    uncertain: tuple[float, float]  # the band a second stage, when set, re-checks

    def score(self, text: str, hits: list[Hit]) -> float:
        """The probability-like score in [0, 1] of ``text`` (already cleaned): of the whole
        text, or of its worst ``WINDOW``-byte window if that is higher."""
        raw = _bytes(text)
        z = self.bias + float(self.dense @ dense_features(text, hits, raw))
        idx = ngram_buckets(text, _bytes(text.lower()) if not text.islower() else raw)
        if len(idx):
            w = self.ngrams[idx]
            best = float(w.sum()) / math.sqrt(len(idx))
            size = (len(idx) + sum(n - 1 for n in ORDERS)) // len(ORDERS)  # bytes read
            if size > WINDOW + STRIDE:
                best = max(best, _windows(w, size))
            z += best
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def save(self, path: Path, meta: dict[str, str] | None = None) -> None:
        arrays: dict[str, Any] = {
            "ngrams": self.ngrams.astype(np.float16),
            "dense": self.dense,
            "bias": np.array([self.bias]),
            "threshold": np.array([self.threshold]),
            "uncertain": np.array(self.uncertain),
            "dense_names": np.array(DENSE),
            "bits": np.array([BITS]),
        }
        arrays |= {f"meta_{k}": np.array([v]) for k, v in (meta or {}).items()}
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path | None = None) -> Model:
        path = path or Path(__file__).with_name("model.npz")
        with np.load(path) as z:
            if int(z["bits"][0]) != BITS or tuple(z["dense_names"]) != DENSE:
                raise ValueError(f"{path} was trained for other features: train it again")
            return cls(
                ngrams=z["ngrams"].astype(np.float32),
                dense=z["dense"].astype(np.float64),
                bias=float(z["bias"][0]),
                threshold=float(z["threshold"][0]),
                uncertain=(float(z["uncertain"][0]), float(z["uncertain"][1])),
            )
