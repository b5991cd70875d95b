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
# byte classes as bytes.translate tables (one C pass; numpy's take costs more on bytes)
_WORD_TABLE = bytes(_ALNUM.astype(np.uint8))
_KIND_TABLE = bytes(np.where(_ALNUM, 0, np.where(_SPACE, 1, 2)).astype(np.uint8))  # 0 word,
# 1 space, 2 symbol
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


def _bytes(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_BYTES:
        half = MAX_BYTES // 2
        raw = raw[:half] + b"\x00" + raw[-half:]
    return raw


@dataclass(slots=True)
class Features:
    idx: np.ndarray  # bucket of every feature, repeats kept, laid out by block (see _windows)
    tri: np.ndarray  # the trigrams' buckets, by position (the first block of ``idx``)
    size: int  # bytes read
    word_starts: np.ndarray  # where each word starts (its pair starts there too)
    raw: bytes  # the lowercased bytes read


def _buckets_into(out: np.ndarray, h: np.ndarray, salt: np.uint32) -> None:
    """A hash's bucket, ``((h + salt) * MIX) >> (32 - BITS)``, written into ``out`` in
    place (no temporary arrays: at a few microseconds each they are a good part of a long
    text's cost)."""
    np.add(h, salt, out=out)
    np.multiply(out, _MIX, out=out)
    np.right_shift(out, np.uint32(32 - BITS), out=out)


def features(text: str) -> Features:
    """Character 3-5-grams, words and word pairs of the lowercased text."""
    text_bytes = _bytes(text.lower())
    raw = np.frombuffer(text_bytes, dtype=np.uint8)
    size = len(raw)
    # word edges on the bytes padded with a non-word byte each side: every change of
    # class is an edge, and they alternate start, end, start, ...
    word = np.frombuffer(b"\x00".join((b"", text_bytes, b"")).translate(_WORD_TABLE), np.bool_)
    edges = np.flatnonzero(word[1:] != word[:-1])
    starts, ends = edges[0::2], edges[1::2]
    lengths = [max(size - n + 1, 0) for n in ORDERS]
    words = len(starts)
    idx = np.empty(sum(lengths) + max(2 * words - 1, 0), dtype=np.uint32)
    b = raw.astype(np.uint32)
    with np.errstate(over="ignore"):
        h = b
        at = 0
        for n in range(2, max(ORDERS) + 1):
            if size < n:
                break
            h = h[: size - n + 1] * _PRIME
            h += b[n - 1 :]
            if n in ORDERS:
                _buckets_into(idx[at : at + len(h)], h, np.uint32(n))
                at += len(h)
        if words:
            # polynomial hash of each word from prefix sums: sum b[k] Q^k, times P^(end-1)
            prefix = np.zeros(size + 1, dtype=np.uint32)
            np.multiply(b, _INVERSES[:size], out=prefix[1:])
            np.cumsum(prefix[1:], dtype=np.uint32, out=prefix[1:])
            hashes = prefix[ends] - prefix[starts]
            hashes *= _POWERS[ends - 1]
            _buckets_into(idx[at : at + words], hashes, _WORD_SALT)
            pairs = hashes[:-1] * _MIX
            pairs += hashes[1:]
            _buckets_into(idx[at + words :], pairs, _PAIR_SALT)
    return Features(idx, idx[: lengths[0]], size, starts, text_bytes)


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


def base_dense(text: str, hits: list[Hit], raw: bytes | None = None) -> np.ndarray:
    """Length, the share of non-ASCII bytes, of symbols, and of symbol runs glued to a word
    (adversarial suffixes such as ``giving**ONE please? revert with "\\!--Two``), then one
    flag per signature that fired on the clean text.  ``raw``: the text's lowercased bytes,
    when it is ASCII (lowercasing changes no byte's class there, so they are read once)."""
    names = {h.name for h in hits if h.how == "clean"}
    b = _bytes(text) if raw is None else raw
    n = max(len(b), 1)
    kind = np.frombuffer(b.translate(_KIND_TABLE), dtype=np.uint8)
    alnum, symbol = kind == 0, kind == 2
    odd = int(np.count_nonzero(alnum[:-2] & symbol[1:-1] & symbol[2:])) if n > 2 else 0
    symbols = int(np.count_nonzero(symbol))
    spaces = n - symbols - int(np.count_nonzero(alnum)) if len(b) else 0
    high = 0 if text.isascii() else int(np.count_nonzero(np.frombuffer(b, np.uint8) >= 128))
    return np.array(
        [
            math.log1p(len(text)) / 10.0,
            high / n,
            symbols / n,
            odd / (spaces + 1),
            *(float(s.name in names) for s in SIGNATURES if not s.indirect_only),
        ],
        dtype=np.float64,
    )


def _block_sums(v: np.ndarray, block: int, dtype: type = np.float32) -> np.ndarray:
    """Sums of ``v`` over consecutive blocks of ``block`` (the last may be short).  float32
    is enough for a few hundred weights (the rounding is far below what a score can tell)
    and faster."""
    return np.add.reduceat(v, np.arange(0, len(v), block), dtype=dtype)


def gibberish(tri: np.ndarray, lm: np.ndarray) -> tuple[float, float]:
    """(worst 64-byte window, whole text): mean trigram log-frequency, over 10.  Windows
    start every half window, so each is two consecutive half-window blocks."""
    if not len(tri):
        return 0.0, 0.0
    half = GIB_WINDOW // 2
    sums = _block_sums(np.take(lm, tri), half, np.float64)  # as small_gibberish sums
    mean = float(sums.sum()) / len(tri)
    if len(tri) <= GIB_WINDOW:
        return mean / 10.0, mean / 10.0
    last = (len(tri) - GIB_WINDOW) // half  # the last window that fits whole
    worst = float((sums[: last + 1] + sums[1 : last + 2]).min()) / GIB_WINDOW
    return worst / 10.0, mean / 10.0


def trigram_lm(tris: list[np.ndarray]) -> np.ndarray:
    """Log-frequency of each trigram bucket in the given (benign) texts, add-one smoothed."""
    every = np.concatenate(tris) if tris else np.zeros(0, dtype=np.uint32)
    counts = np.bincount(every, minlength=1 << BITS).astype(np.float64)
    return np.asarray(np.log((counts + 1.0) / (counts.sum() + len(counts))), dtype=np.float32)


def _windows(w: np.ndarray, f: Features) -> tuple[float, float]:
    """(whole text, highest window): the features' weights summed, over the square root of
    their number, for the whole text and for each ``WINDOW``-byte window (the features that
    start in it).

    Windows start every ``STRIDE`` = half a window, so each is two consecutive blocks of
    ``STRIDE`` bytes, and only block sums are needed.  ``w`` runs block by block as
    :func:`features` lays them out: each n-gram order by position, then words and pairs by
    where they start."""
    if f.size <= WINDOW + STRIDE:
        whole = float(w.sum(dtype=np.float64)) / math.sqrt(max(len(w), 1))
        return whole, whole
    blocks = -(-f.size // STRIDE)
    edges = np.minimum(np.arange(blocks + 1) * STRIDE, f.size)
    # the orders position by position (order n stops n - 3 bytes before the trigrams)
    lengths = [f.size - n + 1 for n in ORDERS]
    starts = np.cumsum([0, *lengths])
    grams = w[: lengths[0]].copy()
    for n, length in enumerate(lengths[1:], start=1):
        grams[:length] += w[starts[n] : starts[n] + length]
    sums = np.zeros(blocks)  # the trigrams may end a block before the bytes do
    part = _block_sums(grams, STRIDE)
    sums[: len(part)] = part
    counts = np.zeros(blocks)
    for length in lengths:
        counts += np.diff(np.minimum(edges, length))
    at = int(starts[-1])
    words = len(f.word_starts)
    if words:  # each word with the pair that starts with it
        per_word = w[at : at + words].copy()
        per_word[:-1] += w[at + words :]
        first = np.searchsorted(f.word_starts, edges)  # the first word of each block
        held = np.diff(first)
        some = held > 0
        sums[some] += np.add.reduceat(per_word, first[:-1][some])
        counts += 2 * held
        # the last word has no pair after it
        counts[int(np.searchsorted(first, words - 1, side="right")) - 1] -= 1
    whole = float(sums.sum()) / math.sqrt(max(len(w), 1))
    last = (f.size - WINDOW) // STRIDE  # the last window that fits whole
    pair_sums = sums[: last + 1] + sums[1 : last + 2]
    window = pair_sums / np.sqrt(counts[: last + 1] + counts[1 : last + 2])
    return whole, float(window.max())


@dataclass(slots=True)
class Model:
    ngrams: np.ndarray  # float32, 2**BITS
    dense: np.ndarray  # float64, len(DENSE)
    bias: float
    threshold: float  # a score at or above it is an attack (chosen on training data)
    uncertain: tuple[float, float]  # the band a second stage, when set, re-checks
    lm: np.ndarray  # float32, 2**BITS: benign trigram log-frequencies (the gibberish feature)

    def dense_of(self, text: str, hits: list[Hit], f: Features) -> np.ndarray:
        raw = f.raw if text.isascii() else None
        return np.concatenate([base_dense(text, hits, raw), gibberish(f.tri, self.lm)])

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
            z += max(_windows(np.take(self.ngrams, f.idx), f))
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
