"""Learning a replica's prediction error online, so a wrong profile stops misleading routing.

A profile can be wrong by a lot: the catalogue's A10G figures for a replica that is really a
CPU running a small model, or a GPU whose driver, kernel or neighbour makes it slower than
when it was measured.  The router then believes one replica is fast and packs it.  As
Dynamo's planner does with its correction factors, each replica keeps two ratios of observed
to predicted time:

- ``prefill``: first-token time observed over predicted.  It scales the profile's prefill
  time (``prefill_rate`` divided by it).
- ``step``: time per output token observed over predicted.  It scales every decode step.

Each observation moves a factor geometrically toward the value that would have made that
prediction right: ``f ← f · (observed / predicted) ** rate``.  The prediction was made with
the corrected profile, so the fixed point is where predictions are right on average (in log
terms), and the error left after ``n`` observations is ``(1 - rate) ** n`` of the first
one's (about 3% after 20 at the default 0.16, in log space).  Factors stay within
``[1/limit, limit]``: one timing taken across a stall must not make a replica look unusable
for long.  The first token of a request carries queueing the profile predicts too, so the
step factor is learnt from steady decoding (the time per token after the first) and the
prefill factor from what is left.

Each pool also keeps one correction learnt from all its replicas' timings, and a replica with
no timings of its own follows it (:class:`PoolCorrections`): replicas of one pool run the same
engine on the same hardware, so one's error is the best guess at another's.  Without it a
router that has learnt one replica is slow still believes its untried twin is fast, and packs
that one instead.

The gateway (:mod:`fleetpilot.gateway.fleet`) and the request-level simulator both call
:class:`Learnt` and :class:`PoolCorrections` (over :func:`learn` and :func:`corrected`);
these are the only copy of the rule.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from fleetpilot.core.model import Profile

__all__ = ["UNCORRECTED", "Correction", "Learnt", "PoolCorrections", "corrected", "learn"]


@dataclass(frozen=True, slots=True)
class Correction:
    prefill: float = 1.0
    step: float = 1.0
    samples: int = 0

    def near(self, other: Correction, tolerance: float = 0.02) -> bool:
        """Whether a profile corrected by ``other`` would predict within ``tolerance`` of one
        corrected by this (so it need not be rebuilt)."""
        return (
            abs(math.log(self.prefill / other.prefill)) <= tolerance
            and abs(math.log(self.step / other.step)) <= tolerance
        )


UNCORRECTED = Correction()


def _toward(factor: float, observed: float, predicted: float, rate: float, limit: float) -> float:
    if observed <= 0 or predicted <= 0 or not math.isfinite(observed / predicted):
        return factor
    moved = factor * math.pow(observed / predicted, rate)
    return min(limit, max(1.0 / limit, moved))


def learn(
    c: Correction,
    *,
    ttft: tuple[float, float] | None = None,
    per_token: tuple[float, float] | None = None,
    rate: float = 0.16,
    limit: float = 50.0,
) -> Correction:
    """``c`` after one request: ``ttft`` and ``per_token`` are (observed, predicted) pairs,
    each predicted with the profile as ``c`` corrected it."""
    prefill, step = c.prefill, c.step
    if per_token is not None:
        step = _toward(step, per_token[0], per_token[1], rate, limit)
    if ttft is not None:
        prefill = _toward(prefill, ttft[0], ttft[1], rate, limit)
    return Correction(prefill, step, c.samples + 1)


@dataclass(slots=True)
class Learnt:
    """One replica's correction and the profile it is routed by: ``assumed`` corrected by
    ``applied``, rebuilt only when the learnt correction would predict 2% apart from it (a
    profile is rebuilt in O(max_batch); a request's timing comes every request)."""

    assumed: Profile
    correction: Correction = UNCORRECTED
    applied: Correction = UNCORRECTED
    profile: Profile = field(init=False)

    def __post_init__(self) -> None:
        self.profile = corrected(self.assumed, self.applied)

    def observe(
        self, ttft: tuple[float, float] | None, per_token: tuple[float, float] | None
    ) -> bool:
        """Learn from one request (see :func:`learn`); whether ``profile`` changed."""
        return self.adopt(learn(self.correction, ttft=ttft, per_token=per_token))

    def adopt(self, c: Correction) -> bool:
        """Take ``c`` as this replica's correction; whether ``profile`` changed."""
        self.correction = c
        if c.near(self.applied):
            return False
        self.applied = c
        self.profile = corrected(self.assumed, c)
        return True

    def inherit(self, pooled: Correction) -> bool:
        """Take the pool's correction while this replica has no timings of its own."""
        return not self.correction.samples and self.adopt(replace(pooled, samples=0))


K = TypeVar("K", bound=Hashable)


class PoolCorrections(Generic[K]):
    """Per pool: the correction learnt from all its replicas' timings, and the replicas with
    no timings of their own yet, which follow it.  Only those are visited on an observation,
    so a learnt stream costs O(1) once every replica has been timed."""

    def __init__(self) -> None:
        self._pooled: dict[Hashable, Correction] = {}
        self._untimed: dict[Hashable, dict[K, Learnt]] = {}

    def join(self, pool: Hashable, key: K, learnt: Learnt) -> bool:
        """A replica enters ``pool``; whether its profile changed (it took the pool's)."""
        if learnt.correction.samples:
            return False
        self._untimed.setdefault(pool, {})[key] = learnt
        return learnt.inherit(self._pooled.get(pool, UNCORRECTED))

    def leave(self, pool: Hashable, key: K) -> None:
        self._untimed.get(pool, {}).pop(key, None)

    def observe(
        self,
        pool: Hashable,
        key: K,
        learnt: Learnt,
        ttft: tuple[float, float] | None,
        per_token: tuple[float, float] | None,
    ) -> list[K]:
        """One request's timings on replica ``key``: it learns, its pool learns, and the
        pool's untimed replicas follow; the replicas whose profile changed."""
        changed = [key] if learnt.observe(ttft, per_token) else []
        untimed = self._untimed.get(pool, {})
        untimed.pop(key, None)
        pooled = learn(self._pooled.get(pool, UNCORRECTED), ttft=ttft, per_token=per_token)
        self._pooled[pool] = pooled
        changed.extend(k for k, other in untimed.items() if other.inherit(pooled))
        return changed


def corrected(profile: Profile, c: Correction) -> Profile:
    """``profile`` with prefill ``c.prefill`` times and decode steps ``c.step`` times as slow."""
    if c.prefill == 1.0 and c.step == 1.0:
        return profile
    return replace(
        profile,
        prefill_rate=profile.prefill_rate / c.prefill,
        step_points=tuple((b, s * c.step) for b, s in profile.step_points),
    )
