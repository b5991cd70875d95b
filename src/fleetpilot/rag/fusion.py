"""Reciprocal rank fusion: lists ranked by unlike scores, merged by rank alone.

BM25 scores and cosine similarities are not on one scale, and their spread changes from
query to query; ranks are.  ``score(d) = sum_i w_i / (k + rank_i(d))`` (Cormack et al.,
2009), with ``k = 60`` as there.  A weight per list lets one method count for more.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RRF_K", "rrf"]

RRF_K = 60


def rrf(
    lists: Sequence[Sequence[int]],
    weights: Sequence[float] | None = None,
    *,
    k: int = RRF_K,
) -> list[tuple[int, float]]:
    """Ids of ``lists`` (each best first), fused, best first; ties keep first-seen order."""
    weights = [1.0] * len(lists) if weights is None else list(weights)
    if len(weights) != len(lists):
        raise ValueError("one weight per list")
    scores: dict[int, float] = {}
    for ranked, w in zip(lists, weights, strict=True):
        for rank, item in enumerate(ranked, 1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
