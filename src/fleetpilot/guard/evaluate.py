"""``fleetpilot guard eval``: the detector per set, beside a length-only baseline.

In these sets jailbreaks are far longer than benign prompts (a median of about 1,500
characters against 230 in llm-warden), so "long means attack" already separates much of
them; a detector means something only where it beats that.  The baseline flags a text whose
length reaches a threshold chosen the same way as the model's: on the training side only,
the lowest length that keeps every benign training set at or under the false-positive rate.

Each source is reported on its own: the attack rows' true-positive rate, the benign rows'
false-positive rate, F1 where it has both, ROC-AUC (against the other class of the same
source where it has one, else against every row of the other class in the evaluation), and
the detector's latency per check, p50 and p99.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from fleetpilot.guard.data import Example
from fleetpilot.guard.detector import Detector

__all__ = ["SetResult", "auc", "evaluate", "length_threshold", "source"]


@dataclass(frozen=True, slots=True)
class SetResult:
    source: str
    attacks: int
    benign: int
    tpr: float | None
    fpr: float | None
    f1: float | None
    auc: float | None
    p50_ms: float
    p99_ms: float
    base_tpr: float | None
    base_fpr: float | None
    base_auc: float | None


def source(set_name: str) -> str:
    for suffix in ("-benign", "-attack", "-jailbreak"):
        if set_name.endswith(suffix):
            return set_name.removesuffix(suffix)
    return set_name


def auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """ROC-AUC as the Mann-Whitney statistic (ties count half)."""
    if not len(pos) or not len(neg):
        return None
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def length_threshold(train: list[Example], max_fpr: float = 0.015) -> float:
    by_set: dict[str, list[int]] = {}
    for ex in train:
        if not ex.label:
            by_set.setdefault(ex.set, []).append(len(ex.text))
    return max(float(np.quantile(v, 1.0 - max_fpr)) for v in by_set.values())


def _f1(tp: int, fp: int, fn: int) -> float | None:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None


def evaluate(
    detector: Detector,
    examples: list[Example],
    base_threshold: float,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[SetResult]:
    scores = np.zeros(len(examples))
    flagged = np.zeros(len(examples), dtype=bool)
    took = np.zeros(len(examples))
    for i, ex in enumerate(examples):
        t0 = time.perf_counter()
        v = detector.check(ex.text, indirect=ex.indirect)
        took[i] = time.perf_counter() - t0
        scores[i], flagged[i] = v.score, v.attack
        if i % 200 == 0:
            progress(i, len(examples))
    progress(len(examples), len(examples))
    lengths = np.array([len(ex.text) for ex in examples], dtype=np.float64)
    labels = np.array([ex.label for ex in examples])
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(source(ex.set), []).append(i)
    out = []
    for name, ix in sorted(groups.items()):
        idx = np.array(ix)
        pos, neg = idx[labels[idx] == 1], idx[labels[idx] == 0]
        # AUC against the other class of this source, or of everything evaluated
        other_pos = pos if len(pos) else np.flatnonzero(labels == 1)
        other_neg = neg if len(neg) else np.flatnonzero(labels == 0)
        base = lengths >= base_threshold
        tp, fp = int(flagged[pos].sum()), int(flagged[neg].sum())
        ms = took[idx] * 1000
        out.append(
            SetResult(
                name,
                len(pos),
                len(neg),
                float(flagged[pos].mean()) if len(pos) else None,
                float(flagged[neg].mean()) if len(neg) else None,
                _f1(tp, fp, len(pos) - tp) if len(pos) and len(neg) else None,
                auc(scores[other_pos], scores[other_neg]),
                float(np.percentile(ms, 50)),
                float(np.percentile(ms, 99)),
                float(base[pos].mean()) if len(pos) else None,
                float(base[neg].mean()) if len(neg) else None,
                auc(lengths[other_pos], lengths[other_neg]),
            )
        )
    return out
