"""Training the linear layer (``fleetpilot guard train``): reproducible from a seed, on the
families of the training side only (see :mod:`.data`), its threshold chosen on that side too.

L2-regularised logistic regression, fitted with SciPy's L-BFGS on a sparse matrix of hashed
n-gram counts.  Each set weighs the same in the loss whatever its size, and the two classes
weigh the same, so 400 near-identical JailbreakChat prompts do not outvote 339 NotInject
sentences.  The threshold is set from out-of-fold scores (three folds by family): the lowest
score that keeps every benign training set's false-positive rate at or under ``max_fpr``.
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
from fleetpilot.guard.model import BITS, DENSE, Model, dense_features, ngram_buckets
from fleetpilot.guard.normalise import clean
from fleetpilot.guard.signatures import hits

__all__ = ["Trained", "fit", "matrix", "train"]


@dataclass(slots=True)
class Trained:
    model: Model
    rows: int
    oof_fpr: dict[str, float]  # per benign training set, at the chosen threshold
    oof_tpr: dict[str, float]  # per attack training set
    l2: float


def matrix(examples: list[Example]) -> scipy.sparse.csr_matrix:
    """One row per example: n-gram counts over the square root of their number, then the
    dense features (the same arithmetic as :meth:`Model.score`)."""
    dim = 1 << BITS
    indptr, indices, values = [0], [], []
    for ex in examples:
        text = clean(ex.text)
        idx = ngram_buckets(text)
        u, c = np.unique(idx, return_counts=True)
        scale = 1.0 / math.sqrt(max(len(idx), 1))
        d = dense_features(text, hits(ex.text))
        indices.append(np.concatenate([u.astype(np.int64), dim + np.arange(len(DENSE))]))
        values.append(np.concatenate([c * scale, d]))
        indptr.append(indptr[-1] + len(u) + len(DENSE))
    return scipy.sparse.csr_matrix(
        (np.concatenate(values), np.concatenate(indices), np.array(indptr)),
        shape=(len(examples), dim + len(DENSE)),
    )


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
        z = x @ coef + b
        m = sign * z
        lse = np.logaddexp(0.0, -m)
        g = -w * sign / (1.0 + np.exp(m))
        value = float(w @ lse) + 0.5 * l2 * float(coef @ coef)
        grad = np.concatenate([x.T @ g + l2 * coef, [g.sum()]])
        return value, grad

    theta0 = np.zeros(x.shape[1] + 1)
    res = scipy.optimize.minimize(
        loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return res.x[:-1], float(res.x[-1])


def _model(coef: np.ndarray, b: float, threshold: float = 0.5) -> Model:
    return Model(
        ngrams=coef[: 1 << BITS].astype(np.float32),
        dense=coef[1 << BITS :].astype(np.float64),
        bias=b,
        threshold=threshold,
        uncertain=(threshold * 0.5, min(0.999, threshold + (1 - threshold) * 0.5)),
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
    out of fold, scoring as the detector does (windows included)."""
    y = np.array([ex.label for ex in examples], dtype=np.float64)
    progress(f"features for {len(examples)} examples")
    x = matrix(examples)
    w = _weights(examples)
    cleaned = [clean(ex.text) for ex in examples]
    sig = [hits(ex.text) for ex in examples]
    rng = random.Random(seed)
    fold_of_family = {f: rng.randrange(3) for f in sorted(set(fams))}
    folds = np.array([fold_of_family[f] for f in fams])
    sets = sorted({ex.set for ex in examples})
    members = {
        (s, lab): [i for i, ex in enumerate(examples) if ex.set == s and ex.label == lab]
        for s in sets
        for lab in (0, 1)
    }
    best: tuple[float, float, float, np.ndarray] | None = None  # (tpr, l2, threshold, oof)
    for l2 in l2s:
        oof = np.zeros(len(examples))
        for k in range(3):
            progress(f"l2 {l2:g}: fold {k + 1}/3")
            tr, te = folds != k, np.flatnonzero(folds == k)
            model = _model(*fit(x[tr], y[tr], w[tr], l2))
            for i in te:
                oof[i] = model.score(cleaned[i], sig[i])
        benign = [oof[ix] for (s, lab), ix in members.items() if lab == 0 and ix]
        threshold = min(max(max(float(np.quantile(v, 1.0 - max_fpr)) for v in benign), 0.05), 0.99)
        tprs = [
            float((oof[ix] >= threshold).mean()) for (s, lab), ix in members.items() if lab and ix
        ]
        tpr = float(np.mean(tprs))
        progress(f"l2 {l2:g}: threshold {threshold:.3f}, mean attack TPR {tpr:.3f} out of fold")
        if best is None or tpr > best[0]:
            best = (tpr, l2, threshold, oof)
    assert best is not None
    _, l2, threshold, oof = best
    progress(f"final fit, l2 {l2:g}")
    coef, b = fit(x, y, w, l2)
    rates = {
        (s, lab): float((oof[ix] >= threshold).mean()) for (s, lab), ix in members.items() if ix
    }
    return Trained(
        _model(coef, b, threshold),
        len(examples),
        {s: r for (s, lab), r in rates.items() if lab == 0},
        {s: r for (s, lab), r in rates.items() if lab == 1},
        l2,
    )
