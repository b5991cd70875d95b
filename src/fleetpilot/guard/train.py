"""Training the linear layer (``fleetpilot guard train``): reproducible from a seed, on the
families of the training side only (see :mod:`.data`), its threshold chosen on that side too.

L2-regularised logistic regression, fitted with SciPy's L-BFGS on a sparse matrix of hashed
feature counts.  Each set weighs the same in the loss whatever its size, and the two classes
weigh the same, so 400 near-identical JailbreakChat prompts do not outvote 339 NotInject
sentences.  The regularisation and the threshold are chosen from out-of-fold scores (three
folds by family, scored exactly as the detector scores, windows included): the threshold is
the lowest score that keeps every benign training set's false-positive rate at or under
``max_fpr`` (1.5%, under the 2% allowed); the regularisation is the one whose attack sets
fare best at it.  The
gibberish feature's trigram model is learnt on each fold's own benign texts.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse

from fleetpilot.guard.data import Example
from fleetpilot.guard.model import (
    BITS,
    DENSE,
    Features,
    Model,
    base_dense,
    features,
    gibberish,
    trigram_lm,
)
from fleetpilot.guard.normalise import clean
from fleetpilot.guard.signatures import Hit, hits

__all__ = ["Trained", "fit", "train"]


@dataclass(slots=True)
class Trained:
    model: Model
    rows: int
    oof_fpr: dict[str, float]  # per benign training set, at the chosen threshold
    oof_tpr: dict[str, float]  # per attack training set
    l2: float


@dataclass(slots=True)
class _Prepared:
    texts: list[str]  # cleaned
    hits: list[list[Hit]]
    feats: list[Features]
    sparse: scipy.sparse.csr_matrix  # the hashed counts over sqrt(their number)
    base: np.ndarray  # the dense features that do not depend on the trigram model


def _prepare(examples: list[Example]) -> _Prepared:
    texts = [clean(ex.text) for ex in examples]
    sig = [hits(ex.text) for ex in examples]
    feats = [features(t) for t in texts]
    indptr, indices, values = [0], [], []
    for f in feats:
        u, c = np.unique(f.idx, return_counts=True)
        indices.append(u.astype(np.int64))
        values.append(c / math.sqrt(max(len(f.idx), 1)))
        indptr.append(indptr[-1] + len(u))
    sparse = scipy.sparse.csr_matrix(
        (np.concatenate(values), np.concatenate(indices), np.array(indptr)),
        shape=(len(examples), 1 << BITS),
    )
    base = np.array([base_dense(t, h) for t, h in zip(texts, sig, strict=True)])
    return _Prepared(texts, sig, feats, sparse, base)


def _matrix(p: _Prepared, rows: np.ndarray, lm: np.ndarray) -> scipy.sparse.csr_matrix:
    gib = np.array([gibberish(p.feats[i].tri, lm) for i in rows])
    dense = np.hstack([p.base[rows], gib])
    assert dense.shape[1] == len(DENSE)
    return scipy.sparse.hstack([p.sparse[rows], scipy.sparse.csr_matrix(dense)], format="csr")


def _weights(examples: list[Example]) -> np.ndarray:
    per_set = Counter(ex.set for ex in examples)
    w = np.array([1.0 / per_set[ex.set] for ex in examples])
    y = np.array([ex.label for ex in examples])
    w[y == 1] *= w[y == 0].sum() / max(w[y == 1].sum(), 1e-12)
    return np.asarray(w * len(examples) / w.sum())


def fit(
    x: scipy.sparse.csr_matrix, y: np.ndarray, w: np.ndarray, l2: float
) -> tuple[np.ndarray, float]:
    sign = 2.0 * y - 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, b = theta[:-1], theta[-1]
        m = sign * (x @ coef + b)
        g = -w * sign / (1.0 + np.exp(np.clip(m, -50, 50)))
        value = float(w @ np.logaddexp(0.0, -m)) + 0.5 * l2 * float(coef @ coef)
        return value, np.concatenate([x.T @ g + l2 * coef, [g.sum()]])

    res = scipy.optimize.minimize(
        loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return res.x[:-1], float(res.x[-1])


def _threshold(negatives: list[np.ndarray], max_fpr: float) -> float:
    """The lowest score that keeps every benign set's false-positive rate at or under
    ``max_fpr``.  (Holding only their mean there was tried: it let BIPIA's honest code
    snippets reach 6% out of fold, and raised no attack set's rate by more than 3 points.)"""
    return max(float(np.quantile(v, 1.0 - max_fpr)) for v in negatives)


def _model(coef: np.ndarray, b: float, lm: np.ndarray, threshold: float = 0.5) -> Model:
    return Model(
        ngrams=coef[: 1 << BITS].astype(np.float32),
        dense=coef[1 << BITS :].astype(np.float64),
        bias=b,
        threshold=threshold,
        uncertain=(threshold * 0.5, min(0.999, threshold + (1 - threshold) * 0.5)),
        lm=lm,
    )


def train(
    examples: list[Example],
    fams: list[int],
    *,
    seed: int = 20261201,
    l2s: tuple[float, ...] = (0.3, 1.0, 3.0),
    max_fpr: float = 0.015,
    progress: Callable[[str], None] = lambda _: None,
) -> Trained:
    """Fit on ``examples`` (the training side); choose the regularisation and the threshold
    out of fold."""
    y = np.array([ex.label for ex in examples], dtype=np.float64)
    progress(f"features for {len(examples)} examples")
    prep = _prepare(examples)
    w = _weights(examples)
    rng = random.Random(seed)
    fold_of_family = {f: rng.randrange(3) for f in sorted(set(fams))}
    folds = np.array([fold_of_family[f] for f in fams])
    sets = sorted({ex.set for ex in examples})
    members = {
        (s, lab): [i for i, ex in enumerate(examples) if ex.set == s and ex.label == lab]
        for s in sets
        for lab in (0, 1)
    }
    benign = y == 0

    def lm_of(rows: np.ndarray) -> np.ndarray:
        return trigram_lm([prep.feats[i].tri for i in rows if benign[i]])

    best: tuple[float, float, float, np.ndarray] | None = None  # (tpr, l2, threshold, oof)
    for l2 in l2s:
        oof = np.zeros(len(examples))
        for k in range(3):
            progress(f"l2 {l2:g}: fold {k + 1}/3")
            tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            lm = lm_of(tr)
            model = _model(*fit(_matrix(prep, tr, lm), y[tr], w[tr], l2), lm)
            for i in te:
                oof[i] = model.score(prep.texts[i], prep.hits[i])
        negatives = [oof[ix] for (s, lab), ix in members.items() if lab == 0 and ix]
        threshold = min(max(_threshold(negatives, max_fpr), 0.05), 0.99)
        tprs = [float((oof[ix] >= threshold).mean()) for (s, lab), ix in members.items()
                if lab and ix]  # fmt: skip
        tpr = float(np.mean(tprs))
        progress(f"l2 {l2:g}: threshold {threshold:.3f}, mean attack TPR {tpr:.3f} out of fold")
        if best is None or tpr > best[0]:
            best = (tpr, l2, threshold, oof)
    assert best is not None
    _, l2, threshold, oof = best
    progress(f"final fit, l2 {l2:g}")
    everything = np.arange(len(examples))
    lm = lm_of(everything)
    coef, b = fit(_matrix(prep, everything, lm), y, w, l2)
    rates = {
        (s, lab): float((oof[ix] >= threshold).mean()) for (s, lab), ix in members.items() if ix
    }
    return Trained(
        _model(coef, b, lm, threshold),
        len(examples),
        {s: r for (s, lab), r in rates.items() if lab == 0},
        {s: r for (s, lab), r in rates.items() if lab == 1},
        l2,
    )
