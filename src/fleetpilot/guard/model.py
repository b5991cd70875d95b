"""The trained layer: a linear model over hashed character n-grams, words and word pairs,
with a few dense features (length, symbols, gibberish, the signature hits).

Why this model: it runs in the request path.  Character 3–5-grams and the words and word
pairs of the cleaned, lowercased text are hashed into 2^18 buckets with numpy (no Python
loop per character or per word: a word's hash is a difference of prefix sums of a
polynomial hash), so a 16,000-character prompt is scored in a fraction of a millisecond.
Character n-grams survive what word features do not (misspellings, glued words, partial
leetspeak, any language); words and pairs carry what an attack asks for.

*Gibberish* is how unlike honest text the worst 64-byte stretch reads: the mean, over its
character trigrams, of their log-frequency in the benign training texts (a trigram language
model kept in the model file).  Optimised adversarial suffixes (GCG, random search) read as
noise to it; a perplexity filter is the usual defence against them, and this is one without
a neural model.

The sparse part is divided by the square root of the feature count, so a long honest text
is not an attack for being long, and it is also scored on each 512-byte window, so an
injection pasted into a long document is seen on its own.  Weights ship as ``model.npz``
beside this file (float16; MODEL.md there names the data and their licences).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.guard.signatures import SIGNATURES, Hit

__all__ = ["BITS", "DENSE", "Features", "Model", "base_dense", "features", "trigram_lm"]

BITS = 18
ORDERS = (3, 4, 5)
MAX_BYTES = 32_768  # beyond this, the first and last halves are read (an attack has to be seen)
DENSE = (
    "log_length", "non_ascii", "symbols", "odd_tokens",
    *(f"sig:{s.name}" for s in SIGNATURES if not s.indirect_only),
    "gibberish_worst", "gibberish_mean",
)  # fmt: skip
WINDOW = 512  # bytes: an attack pasted into a long document is scored on its own, too
STRIDE = 256
GIB_WINDOW = 64
_ALNUM = np.zeros(256, dtype=bool)
_ALNUM[[*range(48, 58), *range(65, 91), *range(97, 123), *range(128, 256)]] = True
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 13, 32]] = True
_PRIME = np.uint32(16777619)  # FNV-1's
_INVERSE = np.uint32(pow(16777619, -1, 2**32))
_MIX = np.uint32(2654435761)  # Knuth's multiplicative hash
_WORD_SALT, _PAIR_SALT = np.uint32(101), np.uint32(102)


def _powers(base: np.uint32) -> np.ndarray:
    """base^k modulo 2^32 for k = 0 .. MAX_BYTES + 1."""
    a = np.full(MAX_BYTES + 2, base, dtype=np.uint32)
    a[0] = 1
    return np.cumprod(a, dtype=np.uint32)


_POWERS, _INVERSES = _powers(_PRIME), _powers(_INVERSE)  # P^k and P^-k, for every offset


def _bytes(text: str) -> np.ndarray:
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_BYTES:
        half = MAX_BYTES // 2
        raw = raw[:half] + b"\x00" + raw[-half:]
    return np.frombuffer(raw, dtype=np.uint8)


def _bucket(h: np.ndarray, salt: np.uint32) -> np.ndarray:
    return ((h + salt) * _MIX) >> np.uint32(32 - BITS)


@dataclass(slots=True)
class Features:
    idx: np.ndarray  # bucket of every feature, repeats kept
    tri: np.ndarray  # the trigrams' buckets, by position
    size: int  # bytes read
    word_starts: np.ndarray  # where each word starts (its pair starts there too)


def features(text: str) -> Features:
    """Character 3-5-grams, words and word pairs of the lowercased text."""
    raw = _bytes(text.lower())
    b = raw.astype(np.uint32)
    size = len(b)
    idx = []
    tri = np.zeros(0, dtype=np.uint32)
    starts = np.zeros(0, dtype=np.int64)
    with np.errstate(over="ignore"):
        h = b.copy()
        for n in range(2, max(ORDERS) + 1):
            if size < n:
                break
            h = h[: size - n + 1] * _PRIME + b[n - 1 :]
            if n in ORDERS:
                bucket = _bucket(h, np.uint32(n))
                if n == ORDERS[0]:
                    tri = bucket
                idx.append(bucket)
        word = np.take(_ALNUM, raw)
        if word.any():
            edge = np.diff(np.concatenate(([False], word, [False])).astype(np.int8))
            starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
            # polynomial hash of each word from prefix sums: sum b[k] Q^k, times P^(end-1)
            prefix = np.zeros(size + 1, dtype=np.uint32)
            np.cumsum(b * _INVERSES[:size], dtype=np.uint32, out=prefix[1:])
            powers = _POWERS
            words = (prefix[ends] - prefix[starts]) * powers[ends - 1]
            idx.append(_bucket(words, _WORD_SALT))
            idx.append(_bucket(words[:-1] * _MIX + words[1:], _PAIR_SALT))
    if not idx:
        return Features(np.zeros(0, np.uint32), tri, size, starts)
    return Features(np.concatenate(idx), tri, size, starts)


SMALL = 40  # bytes: below this, plain Python beats numpy's fixed cost per call (measured)
_M32 = 0xFFFFFFFF
_P, _MIXI = int(_PRIME), int(_MIX)
_SHIFT = 32 - BITS
_ALNUM_SET = frozenset(i for i in range(256) if _ALNUM[i])
_SPACE_SET = frozenset(i for i in range(256) if _SPACE[i])


def small_features(raw: bytes) -> tuple[list[int], list[int]]:
    """:func:`features`' buckets (all, then the trigrams) for a short lowercased text, in
    plain Python: the same arithmetic modulo 2^32, so the same buckets."""
    size = len(raw)
    idx: list[int] = []
    tri: list[int] = []
    h = list(raw)
    for n in range(2, max(ORDERS) + 1):
        if size < n:
            break
        h = [(h[i] * _P + raw[i + n - 1]) & _M32 for i in range(size - n + 1)]
        if n in ORDERS:
            buckets = [((((x + n) & _M32) * _MIXI) & _M32) >> _SHIFT for x in h]
            if n == ORDERS[0]:
                tri = buckets
            idx += buckets
    words: list[int] = []
    w = -1
    for c in raw:
        if c in _ALNUM_SET:
            w = ((w if w >= 0 else 0) * _P + c) & _M32
        elif w >= 0:
            words.append(w)
            w = -1
    if w >= 0:
        words.append(w)
    salt_w, salt_p = int(_WORD_SALT), int(_PAIR_SALT)
    idx += [((((x + salt_w) & _M32) * _MIXI) & _M32) >> _SHIFT for x in words]
    pairs = [((a * _MIXI) + b) & _M32 for a, b in itertools.pairwise(words)]
    idx += [((((x + salt_p) & _M32) * _MIXI) & _M32) >> _SHIFT for x in pairs]
    return idx, tri


def small_dense(text: str, raw: bytes, hits: list[Hit]) -> list[float]:
    """:func:`base_dense` for a short text, in plain Python."""
    names = {h.name for h in hits if h.how == "clean"}
    n = max(len(raw), 1)
    alnum = [c in _ALNUM_SET for c in raw]
    symbol = [not a and c not in _SPACE_SET for a, c in zip(alnum, raw, strict=True)]
    odd = sum(1 for i in range(len(raw) - 2) if alnum[i] and symbol[i + 1] and symbol[i + 2])
    tokens = sum(c in _SPACE_SET for c in raw) + 1
    return [
        math.log1p(len(text)) / 10.0,
        sum(c >= 128 for c in raw) / n,
        sum(symbol) / n,
        odd / tokens,
        *(float(s.name in names) for s in SIGNATURES if not s.indirect_only),
    ]


def small_gibberish(tri: list[int], lm: np.ndarray) -> tuple[float, float]:
    if not tri:
        return 0.0, 0.0
    v = lm[tri].astype(np.float64).tolist()
    mean = sum(v) / len(v)
    if len(v) <= GIB_WINDOW:
        return mean / 10.0, mean / 10.0
    starts = range(0, len(v) - GIB_WINDOW + 1, GIB_WINDOW // 2)
    worst = min(sum(v[s : s + GIB_WINDOW]) / GIB_WINDOW for s in starts)
    return worst / 10.0, mean / 10.0


def base_dense(text: str, hits: list[Hit]) -> np.ndarray:
    """Length, the share of non-ASCII bytes, of symbols, and of symbol runs glued to a word
    (adversarial suffixes such as ``giving**ONE please? revert with "\\!--Two``), then one
    flag per signature that fired on the clean text."""
    names = {h.name for h in hits if h.how == "clean"}
    b = _bytes(text)
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
            *(float(s.name in names) for s in SIGNATURES if not s.indirect_only),
        ],
        dtype=np.float64,
    )


def gibberish(tri: np.ndarray, lm: np.ndarray) -> tuple[float, float]:
    """(worst 64-byte window, whole text): mean trigram log-frequency, over 10."""
    if not len(tri):
        return 0.0, 0.0
    v = lm[tri].astype(np.float64)
    mean = float(v.mean())
    if len(v) <= GIB_WINDOW:
        return mean / 10.0, mean / 10.0
    c = np.concatenate(([0.0], np.cumsum(v)))
    starts = np.arange(0, len(v) - GIB_WINDOW + 1, GIB_WINDOW // 2)
    worst = float(((c[starts + GIB_WINDOW] - c[starts]) / GIB_WINDOW).min())
    return worst / 10.0, mean / 10.0


def trigram_lm(tris: list[np.ndarray]) -> np.ndarray:
    """Log-frequency of each trigram bucket in the given (benign) texts, add-one smoothed."""
    every = np.concatenate(tris) if tris else np.zeros(0, dtype=np.uint32)
    counts = np.bincount(every, minlength=1 << BITS).astype(np.float64)
    return np.asarray(np.log((counts + 1.0) / (counts.sum() + len(counts))), dtype=np.float32)


def _windows(w: np.ndarray, f: Features) -> float:
    """The highest window score: the features that start in the window, summed, over the
    square root of their number.  ``w`` runs block by block as :func:`features` lays them
    out (each n-gram order by position, then words and pairs by their starts), so each
    block's running sum gives its share of every window directly, with no scatter by
    position."""
    starts = np.arange(0, f.size - WINDOW + 1, STRIDE)
    ends = starts + WINDOW
    total = np.zeros(len(starts))
    count = np.zeros(len(starts), dtype=np.int64)
    blocks: list[tuple[int, np.ndarray | None]] = [
        (f.size - n + 1, None) for n in ORDERS if f.size >= n
    ]
    if len(f.word_starts):
        blocks += [
            (len(f.word_starts), f.word_starts),
            (len(f.word_starts) - 1, f.word_starts[:-1]),
        ]
    at = 0
    for length, where in blocks:
        running = np.concatenate(([0.0], np.cumsum(w[at : at + length], dtype=np.float64)))
        at += length
        if where is None:  # an n-gram at every position 0 .. length - 1
            lo, hi = np.minimum(starts, length), np.minimum(ends, length)
        else:
            lo, hi = np.searchsorted(where, starts), np.searchsorted(where, ends)
        total += running[hi] - running[lo]
        count += hi - lo
    return float((total / np.sqrt(np.maximum(count, 1))).max())


@dataclass(slots=True)
class Model:
    ngrams: np.ndarray  # float32, 2**BITS
    dense: np.ndarray  # float64, len(DENSE)
    bias: float
    threshold: float  # a score at or above it is an attack (chosen on training data)
    uncertain: tuple[float, float]  # the band a second stage, when set, re-checks
    lm: np.ndarray  # float32, 2**BITS: benign trigram log-frequencies (the gibberish feature)

    def dense_of(self, text: str, hits: list[Hit], f: Features) -> np.ndarray:
        return np.concatenate([base_dense(text, hits), gibberish(f.tri, self.lm)])

    def score(self, text: str, hits: list[Hit]) -> float:
        """The probability-like score in [0, 1] of ``text`` (already cleaned): of the whole
        text, or of its worst ``WINDOW``-byte window if that is higher."""
        lower = text.lower().encode("utf-8", "replace")
        if len(lower) < SMALL:  # most prompts: the same sums, without numpy's fixed costs
            idx, tri = small_features(lower)
            raw = text.encode("utf-8", "replace")
            dense = [*small_dense(text, raw, hits), *small_gibberish(tri, self.lm)]
            z = self.bias + sum(a * b for a, b in zip(self.dense.tolist(), dense, strict=True))
            if idx:
                z += float(self.ngrams[idx].sum()) / math.sqrt(len(idx))
            return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))
        f = features(text)
        z = self.bias + float(self.dense @ self.dense_of(text, hits, f))
        if len(f.idx):
            w = self.ngrams[f.idx]
            best = float(w.sum()) / math.sqrt(len(f.idx))
            if f.size > WINDOW + STRIDE:
                best = max(best, _windows(w, f))
            z += best
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def save(self, path: Path, meta: dict[str, str] | None = None) -> None:
        arrays: dict[str, Any] = {
            "ngrams": self.ngrams.astype(np.float16),
            "dense": self.dense,
            "bias": np.array([self.bias]),
            "threshold": np.array([self.threshold]),
            "uncertain": np.array(self.uncertain),
            "lm": self.lm.astype(np.float16),
            "dense_names": np.array(DENSE),
            "bits": np.array([BITS]),
        }
        arrays |= {f"meta_{k}": np.array([v]) for k, v in (meta or {}).items()}
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path | None = None) -> Model:
        path = path or Path(__file__).with_name("model.npz")
        with np.load(path) as z:
            if int(z["bits"][0]) != BITS or tuple(z["dense_names"]) != DENSE or "lm" not in z:
                raise ValueError(f"{path} was trained for other features: train it again")
            return cls(
                ngrams=z["ngrams"].astype(np.float32),
                dense=z["dense"].astype(np.float64),
                bias=float(z["bias"][0]),
                threshold=float(z["threshold"][0]),
                uncertain=(float(z["uncertain"][0]), float(z["uncertain"][1])),
                lm=z["lm"].astype(np.float32),
            )
