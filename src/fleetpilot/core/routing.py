"""Routing policies: pure functions ``(request, snapshot, params) -> Decision``.

They are chosen by name from :data:`ROUTERS`.  The gateway calls them on every request with a
snapshot of its live fleet view; the simulator calls them with a virtual one.  Randomness and
rotation come from ``snapshot.tick`` so a replay gives the same answers.

A retry after a failure before the first byte is a new decision on a new snapshot (the
failed replica is ejected by then), so a decision names one replica and no fallbacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fleetpilot.core.model import (
    Action,
    Decision,
    Replica,
    ReplicaState,
    Request,
    ServiceClass,
    Snapshot,
)
from fleetpilot.core.perf import marginal_cost, predict, ttft_and_batch


@dataclass(frozen=True, slots=True)
class RoutingParams:
    """Knobs of the routing policies.

    A replica *meets* a deadline when its predicted TTFT is within ``headroom`` of the
    request's budget: the prediction is an expectation, and the step in progress and the
    prompts admitted beside this one spread the real TTFT around it (measured over emulated
    fleets: the 90th percentile is ~1.4x the prediction on a busy replica), so packing cheap
    replicas up to the full budget would miss about a third of deadlines.

    How far the real TTFT spreads depends on the traffic: bursty arrivals (ServeGen's series
    have an inter-arrival cv of ~2.9 against Poisson's 1) land several requests on a replica
    packed to the edge before its load shows it, and there a fixed 0.75 missed 17% of
    deadlines (a request-level replay of ServeGen m-large: 83% in target where spreading the
    same load held 99.7%).  So the share is *learnt* from realised first tokens, the way a
    quantile is tracked: each interactive request that missed its budget lowers it by
    ``headroom_step``, each that met it raises it by ``headroom_step × target_miss / (1 -
    target_miss)``, so it settles where ``target_miss`` of requests miss (half the 1% an SLO of
    99% allows), between ``min_headroom`` and ``headroom`` (the start).  The engines (the
    gateway's fleet, the simulator) keep the value and hand it to the router in
    ``Snapshot.headroom``; ``target_miss`` 0 keeps ``headroom`` fixed.

    An interactive request that no replica can serve by its deadline is still sent to the
    fastest one unless even that one's predicted TTFT is more than ``shed_factor`` times the
    request's TTFT budget; then it is shed so the client can back off — unless the request is
    ``must_serve`` (a stream's continuation: the client is already reading it).
    """

    shed_factor: float = 3.0
    min_retry_after: float = 1.0
    headroom: float = 0.75
    target_miss: float = 0.005
    headroom_step: float = 0.01
    min_headroom: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= 1 or self.shed_factor < 1:
            raise ValueError("headroom must be in (0, 1] and shed_factor at least 1")
        if not 0 < self.min_headroom <= self.headroom:
            raise ValueError("min_headroom must be in (0, headroom]")
        if not 0 <= self.target_miss < 1 or not 0 < self.headroom_step < 1:
            raise ValueError("target_miss must be in [0, 1) and headroom_step in (0, 1)")

    @property
    def headroom_up(self) -> float:
        """What a met deadline adds to the learnt headroom (0: the headroom is fixed)."""
        return self.headroom_step * self.target_miss / (1.0 - self.target_miss)


def tune_headroom(headroom: float, met: bool, params: RoutingParams) -> float:
    """The learnt headroom after one interactive first token that ``met`` its budget or not
    (:class:`RoutingParams`); unchanged when ``target_miss`` is 0."""
    if params.target_miss <= 0:
        return headroom
    if met:
        return min(params.headroom, headroom + params.headroom_up)
    return max(params.min_headroom, headroom - params.headroom_step)


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
    budget = request.deadline - snapshot.now
    usable = budget * (params.headroom if snapshot.headroom is None else snapshot.headroom)
    model, prompt, tokens = request.model, request.prompt_tokens, request.max_tokens
    # Only TTFT and cost are needed to choose; the chosen replica's prediction is recomputed
    # in full below.  This loop is the hot path of the gateway and of the simulator.
    best: Replica | None = None
    fastest: Replica | None = None
    best_cost = best_ttft = fastest_ttft = fastest_cost = math.inf
    ready = ReplicaState.READY
    for r in snapshot.replicas:
        if r.model != model or r.state is not ready or not r.healthy:  # Replica.routable, inlined
            continue
        profile = r.profile
        ttft, b = ttft_and_batch(profile, r.load, prompt)
        # marginal_cost at the predicted batch, written out: this loop is the hot path.
        cost = (
            r.offering.price_per_hour
            / 3600.0
            * (tokens * profile.step_table[b] / b + prompt / profile.prefill_rate)
        )
        if ttft <= usable and (cost < best_cost or (cost == best_cost and ttft < best_ttft)):
            best, best_cost, best_ttft = r, cost, ttft
        if fastest is None or ttft < fastest_ttft or (ttft == fastest_ttft and cost < fastest_cost):
            fastest, fastest_ttft, fastest_cost = r, ttft, cost
    if fastest is None:
        return _unavailable(request)
    if best is not None:
        p = predict(best.profile, best.load, prompt, tokens)
        return Decision(Action.ROUTE, best.id, p.ttft, p.e2e, best_cost)
    ttft, cost = fastest_ttft, fastest_cost
    p = predict(fastest.profile, fastest.load, prompt, tokens)
    if request.service_class is ServiceClass.BATCH:
        if budget > 0:
            return Decision(
                Action.QUEUE,
                predicted_ttft=ttft,
                retry_after=max(params.min_retry_after, min(budget, ttft - budget)),
                reason="no replica meets the deadline yet; batch work waits",
            )
        return Decision(Action.ROUTE, fastest.id, ttft, p.e2e, cost)
    if ttft > params.shed_factor * max(budget, 1e-3) and not request.must_serve:
        return Decision(
            Action.SHED,
            predicted_ttft=ttft,
            retry_after=max(params.min_retry_after, ttft - budget),
            reason=f"predicted TTFT {ttft:.2f}s exceeds {params.shed_factor:g}x the "
            f"{max(budget, 0):.2f}s budget on every replica",
        )
    return Decision(Action.ROUTE, fastest.id, ttft, p.e2e, cost)


def _baseline(request: Request, chosen: Replica) -> Decision:
    p = predict(chosen.profile, chosen.load, request.prompt_tokens, request.max_tokens)
    cost = marginal_cost(chosen, request.prompt_tokens, request.max_tokens, p.batch)
    return Decision(Action.ROUTE, chosen.id, p.ttft, p.e2e, cost)


def round_robin(
    request: Request, snapshot: Snapshot, params: RoutingParams = DEFAULT_PARAMS
) -> Decision:
    pool = candidates(request, snapshot)
    if not pool:
        return _unavailable(request)
    return _baseline(request, pool[snapshot.tick % len(pool)])


def least_load(
    request: Request, snapshot: Snapshot, params: RoutingParams = DEFAULT_PARAMS
) -> Decision:
    """Fewest requests in flight; ties go to the first listed."""
    pool = candidates(request, snapshot)
    if not pool:
        return _unavailable(request)
    return _baseline(request, min(pool, key=lambda r: r.load.in_flight))


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
    return _baseline(request, a if a.load.in_flight <= b.load.in_flight else b)


ROUTERS: dict[str, Router] = {
    "cost_slo": cost_slo,
    "round_robin": round_robin,
    "least_load": least_load,
    "power_of_two": power_of_two,
}
