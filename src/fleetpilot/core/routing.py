"""Routing policies: pure functions ``(request, snapshot, params) -> Decision``.

They are chosen by name from :data:`ROUTERS`.  The gateway calls them on every request with a
snapshot of its live fleet view; the simulator calls them with a virtual one.  Randomness and
rotation come from ``snapshot.tick`` so a replay gives the same answers.

``alternatives`` in a decision lists where to go next, best first, if the chosen replica
fails before its first byte; the gateway retries down that list.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fleetpilot.core.model import Action, Decision, Replica, Request, ServiceClass, Snapshot
from fleetpilot.core.perf import marginal_cost, predict, ttft_and_cost


@dataclass(frozen=True, slots=True)
class RoutingParams:
    """Knobs of the routing policies.

    A replica *meets* a deadline when its predicted TTFT is within ``headroom`` of the
    request's budget: the prediction is an expectation, and the step in progress and the
    prompts admitted beside this one spread the real TTFT around it (measured over emulated
    fleets: the 90th percentile is ~1.4x the prediction on a busy replica), so packing cheap
    replicas up to the full budget would miss about a third of deadlines.

    An interactive request that no replica can serve by its deadline is still sent to the
    fastest one unless even that one's predicted TTFT is more than ``shed_factor`` times the
    request's TTFT budget; then it is shed so the client can back off.
    """

    shed_factor: float = 3.0
    min_retry_after: float = 1.0
    headroom: float = 0.75

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= 1 or self.shed_factor < 1:
            raise ValueError("headroom must be in (0, 1] and shed_factor at least 1")


DEFAULT_PARAMS = RoutingParams()

Router = Callable[[Request, Snapshot, RoutingParams], Decision]


def candidates(request: Request, snapshot: Snapshot) -> list[Replica]:
    return [r for r in snapshot.replicas if r.model == request.model and r.routable]


def _unavailable(request: Request) -> Decision:
    return Decision(Action.UNAVAILABLE, reason=f"no ready replica serves {request.model!r}")


def cost_slo(
    request: Request, snapshot: Snapshot, params: RoutingParams = DEFAULT_PARAMS
) -> Decision:
    """The cheapest replica predicted to meet the deadline; else the fastest, shed or queue."""
    pool = candidates(request, snapshot)
    if not pool:
        return _unavailable(request)
    budget = request.deadline - snapshot.now
    usable = budget * params.headroom
    prompt, tokens = request.prompt_tokens, request.max_tokens
    # (ttft, cost, index): only TTFT and cost are needed to choose; the chosen replica's
    # prediction is recomputed in full below.  This loop is the hot path of the gateway and
    # of the simulator, hence the flat tuples.
    scored = [(*ttft_and_cost(r, prompt, tokens), i) for i, r in enumerate(pool)]
    best_i = -1
    best_key = (math.inf, math.inf)
    for ttft, cost, i in scored:
        if ttft <= usable and (cost, ttft) < best_key:
            best_key, best_i = (cost, ttft), i
    if best_i >= 0:
        best = pool[best_i]
        p = predict(best.profile, best.load, prompt, tokens)
        # fall back to the other replicas that meet the deadline, cheapest first, then the rest,
        # fastest first
        others = sorted(
            (s for s in scored if s[2] != best_i),
            key=lambda s: (s[0] > usable, s[1] if s[0] <= usable else s[0]),
        )
        return Decision(
            Action.ROUTE, best.id, p.ttft, p.e2e, best_key[0],
            alternatives=tuple(pool[s[2]].id for s in others),
        )  # fmt: skip
    scored.sort()
    ttft, cost, i = scored[0]
    fastest = pool[i]
    p = predict(fastest.profile, fastest.load, prompt, tokens)
    rest = tuple(pool[s[2]].id for s in scored[1:])
    if request.service_class is ServiceClass.BATCH:
        if budget > 0:
            return Decision(
                Action.QUEUE,
                predicted_ttft=ttft,
                retry_after=max(params.min_retry_after, min(budget, ttft - budget)),
                reason="no replica meets the deadline yet; batch work waits",
            )
        return Decision(Action.ROUTE, fastest.id, ttft, p.e2e, cost, alternatives=rest)
    if ttft > params.shed_factor * max(budget, 1e-3):
        return Decision(
            Action.SHED,
            predicted_ttft=ttft,
            retry_after=max(params.min_retry_after, ttft - budget),
            reason=f"predicted TTFT {ttft:.2f}s exceeds {params.shed_factor:g}x the "
            f"{max(budget, 0):.2f}s budget on every replica",
        )
    return Decision(Action.ROUTE, fastest.id, ttft, p.e2e, cost, alternatives=rest)


def _baseline(request: Request, chosen: Replica, pool: list[Replica]) -> Decision:
    p = predict(chosen.profile, chosen.load, request.prompt_tokens, request.max_tokens)
    cost = marginal_cost(chosen, request.prompt_tokens, request.max_tokens, p.batch)
    rest = tuple(r.id for r in sorted(pool, key=lambda r: r.load.in_flight) if r is not chosen)
    return Decision(Action.ROUTE, chosen.id, p.ttft, p.e2e, cost, alternatives=rest)


def round_robin(
    request: Request, snapshot: Snapshot, params: RoutingParams = DEFAULT_PARAMS
) -> Decision:
    pool = candidates(request, snapshot)
    if not pool:
        return _unavailable(request)
    return _baseline(request, pool[snapshot.tick % len(pool)], pool)


def least_load(
    request: Request, snapshot: Snapshot, params: RoutingParams = DEFAULT_PARAMS
) -> Decision:
    """Fewest requests in flight; ties go to the first listed."""
    pool = candidates(request, snapshot)
    if not pool:
        return _unavailable(request)
    return _baseline(request, min(pool, key=lambda r: r.load.in_flight), pool)


def _mix(x: int) -> int:
    """A 32-bit integer hash (Knuth's multiplicative plus xorshift) for replayable choices."""
    x = (x * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF
    x ^= x >> 16
    return (x * 0x45D9F3B) & 0xFFFFFFFF


def power_of_two(
    request: Request, snapshot: Snapshot, params: RoutingParams = DEFAULT_PARAMS
) -> Decision:
    """Two replicas drawn by hashing the tick; the less loaded one wins."""
    pool = candidates(request, snapshot)
    if not pool:
        return _unavailable(request)
    n = len(pool)
    i = _mix(snapshot.tick) % n
    j = (i + 1 + _mix(snapshot.tick + 0x5BD1E995) % (n - 1)) % n if n > 1 else i
    a, b = pool[i], pool[j]
    return _baseline(request, a if a.load.in_flight <= b.load.in_flight else b, pool)


ROUTERS: dict[str, Router] = {
    "cost_slo": cost_slo,
    "round_robin": round_robin,
    "least_load": least_load,
    "power_of_two": power_of_two,
}
