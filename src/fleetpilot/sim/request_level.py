"""Request-level simulation of a fleet in virtual time: the same engine, router and policy.

Every replica runs the perf model's :class:`~fleetpilot.core.perf.BatchEngine` (the batching
model the emulator executes in real time), every arrival is routed by the gateway's own
policy from :data:`~fleetpilot.core.routing.ROUTERS`, and a capacity policy (``policy(snapshot,
state, params) -> (Plan, state)``) is called every control interval.  What comes out is each
request's TTFT and end-to-end latency, and the fleet's cost.

How time moves.  Arrivals are read in order from the trace; a heap of events
(:class:`~fleetpilot.sim.events.EventLoop`) holds control ticks, replicas becoming ready,
pre-emption notices and retries, and an event due at the instant of an arrival runs before
it.  Engine steps are
not heap events: replicas interact only through routing, so each replica is stepped lazily
up to the time of the next event that looks at it (an arrival that may be routed to it, a
tick, a notice).  A step that admits nobody is followed by identical steps until a sequence
finishes, so those are jumped over (``BatchEngine.fast_forward``): the work per request is
its admission and its completion, not its tokens.  A step boundary at exactly the
time of an event comes after it: a request that arrives as a step ends joins the next step,
and requests arriving together at an idle replica share its first step, as BatchEngine
dictates.  A request's first token is the end of the step that admitted it; it completes at
the end of the step that gives it its last token.

Routing mimics the gateway (:mod:`fleetpilot.gateway.stages.upstream`): ROUTE adds the
request to the replica's engine; SHED sheds it; QUEUE (batch) retries after ``retry_after``
(or at the deadline); UNAVAILABLE waits for a starting replica until the deadline, and is
shed at once when nothing is starting.  The deadline is arrival + ``ttft_slo_s``
(``batch_slo_s`` for batch).

Lifecycle.  A replica is *starting* from launch (billed from then, as clouds bill) until
``offering.startup_s`` later, then *ready*; scaling down drains replicas (not-yet-ready first,
then idle, then least loaded): a draining replica takes no new work and is *gone* once its
engine is empty.  The fleet keeps each pool at its target (``initial``, then the policy's
plans, capped by the offering's quota) and replaces pre-empted replicas at once, as a
Deployment or node group would.  The capacity policy is called at t=0 and every
``control_interval_s`` until the last arrival, with the pools (current targets), the replicas
that are not gone (state and live load) and ``demand[model]`` observed since its last call;
its plan's targets are applied at once and arrivals of a class in ``plan.shed`` are shed.

Spot pre-emption.  A notice drains the replica at once (and the fleet launches its
replacement); ``notice_s`` later it is gone, and every request still on it is continued
elsewhere as the gateway does: a new request whose prompt is the original prompt plus the
tokens generated so far, asking for the remainder, with a fresh TTFT budget.  The request
keeps its first TTFT; its completion is the continuation's.  Where the gateway would abort
the stream, the simulator keeps trying, so that *lost* means "could never complete": a shed
continuation retries after ``retry_after`` while the fleet is busy, one with no ready replica
waits for a starting one; it is lost only when the router sheds it on an idle fleet or when
no replica is ready or starting.

Cost: every replica costs its offering's price from launch until it is gone (or the end of
the run: the last arrival or the last completion, whichever is later).
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from fleetpilot.core.burstiness import BurstMeter, excess
from fleetpilot.core.capacity import Plan, PlanParams
from fleetpilot.core.correction import Learnt, PoolCorrections
from fleetpilot.core.model import (
    Action,
    CapacityClass,
    Demand,
    Pool,
    Profile,
    Replica,
    ReplicaState,
    Request,
    ServiceClass,
    Snapshot,
)
from fleetpilot.core.perf import BatchEngine
from fleetpilot.core.perf import Sequence as EngineSequence
from fleetpilot.core.routing import DEFAULT_PARAMS, ROUTERS, RoutingParams, tune_headroom
from fleetpilot.core.workload import TraceRequest
from fleetpilot.sim.events import EventLoop

__all__ = [
    "STATUSES",
    "CapacityPolicy",
    "Preemptions",
    "ReplicaRecord",
    "SimResult",
    "Timeline",
    "simulate",
]

# per spot pool, the times of its pre-emption notices or "rate" (its catalogue rate); or
# "rate" for every pool; None: no pre-emptions
Preemptions = Mapping[str, Sequence[float] | Literal["rate"]] | Literal["rate"] | None

CapacityPolicy = Callable[[Snapshot, Any, PlanParams], tuple[Plan, Any]]

STATUSES = ("pending", "ok", "shed", "lost")
_PENDING, _OK, _SHED, _LOST = range(4)
_CLASSES = (ServiceClass.INTERACTIVE, ServiceClass.BATCH)
_INF = math.inf
_NAN = math.nan
_STARTING, _READY, _DRAINING, _GONE = (
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.DRAINING,
    ReplicaState.GONE,
)


@dataclass(slots=True, eq=False)
class _Rep:
    """One simulated replica: its engine, lifecycle times and the router's cached view."""

    index: int
    pool_idx: int
    pool: Pool
    profile: Profile
    engine: BatchEngine
    started: float
    state: ReplicaState = ReplicaState.STARTING
    ready_at: float = _INF
    drained_at: float = _INF
    gone_at: float = _INF
    boundary: float = _INF  # next step boundary: end of the step running, or a pending start
    stepping: bool = False  # a step is in progress; it ends at ``boundary``
    admitted: tuple[str, ...] = ()  # ids the step in progress admitted
    step_s: float = 0.0  # duration of the step in progress
    noticed: bool = False  # got a pre-emption notice
    dirty: bool = False  # ``view`` is stale
    learnt: Learnt = field(init=False)  # what its timings taught (learn_profiles)
    id: str = field(init=False)
    url: str = field(init=False)
    view: Replica = field(init=False)

    def __post_init__(self) -> None:
        self.id = f"{self.pool.name}/{self.index}"
        self.url = f"sim://{self.id}"
        self.learnt = Learnt(self.profile)
        self.view = self._view()

    def frozen(self) -> Replica:
        """The router's and policy's view; rebuilt only when something changed."""
        if self.dirty:
            self.view = self._view()
            self.dirty = False
        return self.view

    def relearnt(self) -> None:
        """Route by the learnt profile (it changed)."""
        self.profile = self.learnt.profile
        self.dirty = True

    def _view(self) -> Replica:
        p = self.pool
        return Replica(
            self.id,
            p.name,
            p.model,
            self.url,
            p.offering,
            self.profile,
            self.state,
            self.engine.load(),
        )


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    id: str
    pool: str
    capacity_class: CapacityClass
    price_per_hour: float
    started: float
    ready_at: float  # inf: never became ready
    drained_at: float  # inf: never drained
    gone_at: float  # the end of the run for replicas still up then
    preempted: bool


@dataclass(frozen=True)
class Timeline:
    """Per-window view: window ``k`` covers ``[start[k], start[k] + window_s)``.

    Replica counts and the cost rate are time averages over the window; ``p99_ttft`` is that
    of interactive requests that arrived in it and got a first token (NaN when none).
    """

    window_s: float
    start: np.ndarray
    arrivals: np.ndarray
    ready: dict[str, np.ndarray]  # capacity class -> mean ready replicas
    cost_per_hour: np.ndarray
    p99_ttft: np.ndarray
    preemptions: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per window (NaN as None)."""
        out = []
        for k in range(len(self.start)):
            row: dict[str, Any] = {
                "start": float(self.start[k]),
                "arrivals": int(self.arrivals[k]),
                **{f"ready_{c}": float(v[k]) for c, v in self.ready.items()},
                "cost_per_hour": float(self.cost_per_hour[k]),
                "p99_ttft": _num(self.p99_ttft[k]),
                "preemptions": int(self.preemptions[k]),
            }
            out.append(row)
        return out


@dataclass(frozen=True)
class SimResult:
    """Per-request arrays (index = position in the trace) and fleet totals.

    ``ttft``/``e2e`` are NaN for requests that never got a first token / never completed;
    ``status`` indexes :data:`STATUSES`; ``pool`` indexes ``pool_names`` (-1: none);
    ``continued`` counts a request's continuations after pre-emptions; ``service_class`` is 0
    for interactive and 1 for batch; ``output_tokens`` counts tokens delivered.
    """

    pool_names: tuple[str, ...]
    ttft_slo_s: float
    arrival: np.ndarray
    ttft: np.ndarray
    e2e: np.ndarray
    status: np.ndarray
    pool: np.ndarray
    continued: np.ndarray
    service_class: np.ndarray
    output_tokens: np.ndarray
    duration_s: float
    preemptions: int
    continuations: int
    cost_by_pool: dict[str, float]
    replicas: tuple[ReplicaRecord, ...]
    timeline: Timeline
    shed_reasons: dict[str, int] = field(default_factory=dict)
    lost_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return sum(self.cost_by_pool.values())

    def _by_class(self, hours: bool) -> dict[str, float]:
        out = {c.value: 0.0 for c in CapacityClass}
        for r in self.replicas:
            secs = max(r.gone_at - r.started, 0.0)
            out[r.capacity_class.value] += secs / 3600 * (1.0 if hours else r.price_per_hour)
        return out

    @property
    def cost_by_class(self) -> dict[str, float]:
        return self._by_class(hours=False)

    @property
    def replica_hours_by_class(self) -> dict[str, float]:
        return self._by_class(hours=True)

    def count(self, status: str) -> int:
        return int(np.count_nonzero(self.status == STATUSES.index(status)))

    def slo_attainment(self) -> float | None:
        """Share of interactive requests with a first token within the TTFT target."""
        inter = self.service_class == 0
        n = int(np.count_nonzero(inter))
        if not n:
            return None
        met = inter & (self.status == _OK) & (self.ttft <= self.ttft_slo_s)
        return int(np.count_nonzero(met)) / n

    def summary(self) -> dict[str, Any]:
        """Totals for tables; percentiles are over completed interactive requests."""
        done = (self.status == _OK) & (self.service_class == 0)
        tokens = int(self.output_tokens.sum())
        cost = self.cost
        out: dict[str, Any] = {
            "requests": len(self.arrival),
            "ok": self.count("ok"),
            "shed": self.count("shed"),
            "lost": self.count("lost"),
            "continued": int(np.count_nonzero(self.continued)),
            "continuations": self.continuations,
            "preemptions": self.preemptions,
            "duration_s": self.duration_s,
            "cost": cost,
            "cost_by_class": self.cost_by_class,
            "replica_hours_by_class": self.replica_hours_by_class,
            "output_tokens": tokens,
            "cost_per_million_tokens": cost / tokens * 1e6 if tokens else None,
            "slo_attainment": self.slo_attainment(),
        }
        for name, values in (("ttft", self.ttft[done]), ("e2e", self.e2e[done])):
            for q in (50, 95, 99):
                out[f"{name}_p{q}"] = _num(np.percentile(values, q)) if len(values) else None
        out["shed_reasons"] = dict(sorted(self.shed_reasons.items()))
        out["lost_reasons"] = dict(sorted(self.lost_reasons.items()))
        return out


def _num(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def simulate(
    trace: Sequence[TraceRequest],
    pools: Sequence[Pool],
    *,
    router: str = "cost_slo",
    capacity_policy: CapacityPolicy | None = None,
    params: PlanParams | None = None,
    control_interval_s: float = 60.0,
    initial: Mapping[str, int] | None = None,
    preemptions: Preemptions = None,
    notice_s: float = 120.0,
    ttft_slo_s: float | None = None,
    batch_slo_s: float = 600.0,
    seed: int = 0,
    model: str | None = None,
    routing_params: RoutingParams = DEFAULT_PARAMS,
    window_s: float = 60.0,
    engine: Callable[[Profile], BatchEngine] = BatchEngine,
    executed: Mapping[str, Profile] | None = None,
    learn_profiles: bool = False,
) -> SimResult:
    """Replay ``trace`` (sorted by arrival) on a fleet of ``pools``.

    ``initial`` gives the replicas per pool that are ready at t=0 (default: each pool's
    ``target``).  ``preemptions`` is either, per spot pool, the times at which one of its
    replicas (drawn with ``seed``) gets a pre-emption notice, or ``"rate"`` (for all pools, or
    as one pool's value): every spot replica of those pools is pre-empted after an exponential
    lifetime with its offering's ``interruption_rate`` (per hour), drawn with ``seed``.
    ``model`` is the model every request asks for (default:
    the pools' model, when they all serve one).  ``ttft_slo_s`` defaults to
    ``params.ttft_slo_s``.  ``engine`` makes each replica's batching engine (a seam for
    fault injection, e.g. a ``slowdown``, and for benchmarking engine changes).
    ``executed`` gives, per pool, the profile its engines really run when it is not the one
    the router is told (a wrong catalogue figure); ``learn_profiles`` corrects the router's
    profile of each replica from its first-token and per-token times, as the gateway does
    (:mod:`fleetpilot.core.correction`).
    """
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    sim = _Sim(
        trace,
        pools,
        router,
        capacity_policy,
        params or PlanParams(),
        control_interval_s,
        initial,
        preemptions,
        notice_s,
        ttft_slo_s,
        batch_slo_s,
        seed,
        model,
        routing_params,
        engine,
        executed or {},
        learn_profiles,
    )
    # The run allocates millions of short-lived objects and no reference cycles, so the cyclic
    # collector's passes are pure overhead (~6% of the run); reference counting frees them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        sim.run()
    finally:
        if collecting:
            gc.enable()
    return sim.result(window_s)


class _Sim:
    def __init__(
        self,
        trace: Sequence[TraceRequest],
        pools: Sequence[Pool],
        router: str,
        policy: CapacityPolicy | None,
        params: PlanParams,
        interval: float,
        initial: Mapping[str, int] | None,
        preemptions: Preemptions,
        notice_s: float,
        ttft_slo_s: float | None,
        batch_slo_s: float,
        seed: int,
        model: str | None,
        routing_params: RoutingParams,
        engine: Callable[[Profile], BatchEngine],
        executed: Mapping[str, Profile],
        learn_profiles: bool,
    ) -> None:
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; known: {sorted(ROUTERS)}")
        names = [p.name for p in pools]
        if not pools or len(set(names)) != len(names):
            raise ValueError("pools must be given, with distinct names")
        if any(p.profile is None for p in pools):
            raise ValueError("every pool needs a profile (Catalogue.pools gives them)")
        models = sorted({p.model for p in pools})
        if model is None and len(models) != 1:
            raise ValueError(f"pools serve several models {models}: say which one with model=")
        self.model = model or models[0]
        if self.model not in models:
            raise ValueError(f"no pool serves {self.model!r}")
        if interval <= 0 or notice_s < 0:
            raise ValueError("control_interval_s must be positive and notice_s not negative")
        if any(b.arrival < a.arrival for a, b in itertools.pairwise(trace)):
            raise ValueError("the trace must be sorted by arrival")
        if any(r.max_tokens < 1 or r.prompt_tokens < 0 or r.arrival < 0 for r in trace):
            raise ValueError("every request needs arrival >= 0, prompt >= 0 and max_tokens >= 1")
        init = dict(initial) if initial is not None else {p.name: p.target for p in pools}
        unknown = set(init) - set(names)
        if unknown or any(n < 0 for n in init.values()):
            raise ValueError(f"bad initial replicas {init} for pools {names}")

        self.loop = EventLoop()
        self.route_fn = ROUTERS[router]
        self.new_engine = engine
        self.executed = executed
        self.learning = learn_profiles
        self.corrections: PoolCorrections[_Rep] = PoolCorrections()
        self.routing_params = routing_params
        self.policy = policy
        self.params = params
        self.policy_state: Any = None
        self.interval = interval
        self.notice_s = notice_s
        self.slo = params.ttft_slo_s if ttft_slo_s is None else ttft_slo_s
        self.pools = list(pools)
        self.pool_idx = {n: i for i, n in enumerate(names)}
        self.targets = [init.get(n, 0) for n in names]
        self.preemptions_in = preemptions
        self.by_rate = (
            set(names)
            if preemptions == "rate"
            else {n for n, v in preemptions.items() if v == "rate"}
            if isinstance(preemptions, Mapping)
            else set()
        )
        self.victims = random.Random(f"fleetpilot-sim/{seed}/victims")
        self.lifetimes = random.Random(f"fleetpilot-sim/{seed}/lifetimes")

        self.reps: list[_Rep] = []
        self.by_id: dict[str, _Rep] = {}
        self.live: list[_Rep] = []  # not gone, in launch order
        self.active: list[list[_Rep]] = [[] for _ in pools]  # starting or ready, per pool
        self.routable: list[_Rep] = []  # ready replicas of the model, in launch order
        self.parked: list[int] = []  # requests waiting for a replica to become ready
        self.plan_shed: tuple[ServiceClass, ...] = ()
        self.ticks = 0  # routing calls
        self.control_ticks = 0
        self.preempt_times: list[float] = []
        self.continuations = 0
        self.shed_reasons: Counter[str] = Counter()
        self.lost_reasons: Counter[str] = Counter()

        self.trace = trace
        n = len(trace)
        self.arrival = [r.arrival for r in trace]
        self.budget = [
            self.slo if r.service_class is ServiceClass.INTERACTIVE else batch_slo_s for r in trace
        ]
        self.deadline = [a + b for a, b in zip(self.arrival, self.budget, strict=True)]
        # the router's learnt headroom, as the gateway learns it: from interactive first tokens
        learning = routing_params.target_miss > 0
        self.learns = [learning and r.service_class is ServiceClass.INTERACTIVE for r in trace]
        self.headroom = routing_params.headroom
        self.ttft = [_NAN] * n
        self.e2e = [_NAN] * n
        self.status = [_PENDING] * n
        self.served = [-1] * n
        self.routed = [(0.0, 0.0, 0.0)] * n  # when routed; predicted TTFT and time per token
        self.produced = [0] * n  # tokens delivered by earlier (pre-empted) segments
        self.continued = [0] * n
        self.wait_token = [0] * n  # bumps on every routing attempt, so stale timers are ignored
        self.unresolved = n
        self.last_arrival = self.arrival[-1] if n else 0.0
        self.last_done = 0.0
        self.window_arrivals: list[int] = []  # indices arrived since the last control tick
        self.bursts = BurstMeter()  # the gateway's meter, over the arrivals replayed
        self.bursts_seen = list(self.bursts.counts)
        self.last_tick = 0.0

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> None:
        loop = self.loop
        for p, count in enumerate(self.targets):
            for _ in range(count):
                self._ready(self._launch(p, at_once=True))
        if self.policy is not None:
            loop.schedule(0.0, self._tick)
        if isinstance(self.preemptions_in, Mapping):
            for name, times in sorted(self.preemptions_in.items()):
                if times == "rate":
                    continue
                p = self._pool_of(name)
                for t in sorted(times):
                    loop.schedule(max(float(t), 0.0), self._preempt_pool, p)
        # Arrivals come from the sorted trace, not the heap (one push and pop fewer per
        # request); an event at the same instant as an arrival runs before it.
        run, arrive = loop.run, self._arrive
        for i, t in enumerate(self.arrival):
            run(until=t)
            loop.now = t
            arrive(i)
        loop.run(until=self.last_arrival)
        # After the last arrival: run only what is needed for the work left to finish.
        while self.unresolved:
            te = loop.peek()
            for rep in list(self.live):
                self._advance(rep, te)
            if not self.unresolved or te == _INF:
                break
            loop.step()
        for i, s in enumerate(self.status):
            if s == _PENDING:  # cannot happen unless a policy strands work; report it
                self._resolve(i, _LOST, "never completed")
        self.end = max(self.last_arrival, self.last_done)

    def _pool_of(self, name: str) -> int:
        if name not in self.pool_idx:
            raise ValueError(f"unknown pool {name!r}; known: {list(self.pool_idx)}")
        return self.pool_idx[name]

    # -- arrivals and routing ---------------------------------------------------------------
    def _arrive(self, i: int) -> None:
        if self.policy is not None:
            self.window_arrivals.append(i)
            self.bursts.add(self.arrival[i])
        if self.trace[i].service_class in self.plan_shed:
            self._resolve(i, _SHED, "the plan sheds this service class")
            return
        self._route(i)

    def _route(self, i: int) -> None:
        now = self.loop.now
        self.wait_token[i] += 1
        continuation = self.continued[i] > 0
        if continuation:  # every attempt gets a fresh TTFT budget, as the gateway gives it
            self.deadline[i] = now + self.budget[i]
        routable = self.routable
        for rep in routable:
            if rep.boundary < now:
                self._advance(rep, now)
        views = tuple([rep.frozen() if rep.dirty else rep.view for rep in routable])
        tr = self.trace[i]
        done = self.produced[i]
        request = Request(
            self.model,
            tr.prompt_tokens + done,
            tr.max_tokens - done,
            self.deadline[i],
            tr.tenant,
            tr.service_class,
            now,
        )
        snapshot = Snapshot(now, views, self.ticks, headroom=self.headroom)
        decision = self.route_fn(request, snapshot, self.routing_params)
        self.ticks += 1
        action = decision.action
        if action is Action.ROUTE:
            rep = self.by_id[decision.replica_id or ""]
            rep.engine.add(EngineSequence(str(i), request.prompt_tokens, request.max_tokens))
            if self.learning:
                per_token = (decision.predicted_e2e - decision.predicted_ttft) / max(
                    request.max_tokens - 1, 1
                )
                self.routed[i] = (now, decision.predicted_ttft, per_token)
            rep.dirty = True
            if rep.boundary == _INF:  # idle: a step starts now, with whatever else arrives now
                rep.boundary = now
            self.served[i] = rep.pool_idx
        elif action is Action.QUEUE:
            wait = min(decision.retry_after, self.deadline[i] - now)
            self.loop.schedule(now + max(wait, 0.0), self._retry, i, self.wait_token[i])
        elif action is Action.SHED:
            if continuation and any(r.engine.busy for r in self.routable):
                # Half a stream is out: try again once the fleet is less busy.
                wait = max(decision.retry_after, self.routing_params.min_retry_after)
                self.loop.schedule(now + wait, self._retry, i, self.wait_token[i])
            elif continuation:
                self._resolve(i, _LOST, "the router sheds its continuation even on an idle fleet")
            else:
                self._resolve(i, _SHED, "the router shed it: no replica can meet its deadline")
        else:  # UNAVAILABLE: wait for a starting replica, if there is one
            starting = [
                r.started + r.pool.offering.startup_s
                for r in self.live
                if r.state is _STARTING and r.pool.model == self.model
            ]
            if not starting:
                status = _LOST if continuation else _SHED
                self._resolve(i, status, "no replica ready or starting")
                return
            self.parked.append(i)
            until = min(starting) if continuation else self.deadline[i]
            self.loop.schedule(max(until, now), self._expire, i, self.wait_token[i])

    def _retry(self, i: int, token: int) -> None:
        if self.wait_token[i] == token and self.status[i] == _PENDING:
            self._route(i)

    def _expire(self, i: int, token: int) -> None:
        """A parked request's wait is over: a fresh one is shed, a continuation tries again
        (the replica it waited for was cancelled)."""
        if self.wait_token[i] == token and i in self.parked:
            self.parked.remove(i)
            if self.continued[i]:
                self._route(i)
            else:
                self._resolve(i, _SHED, "no replica became ready before the deadline")

    def _resolve(self, i: int, status: int, reason: str) -> None:
        t = self.loop.now
        self.status[i] = status
        self.unresolved -= 1
        self.last_done = max(self.last_done, t)
        (self.lost_reasons if status == _LOST else self.shed_reasons)[reason] += 1

    # -- engines ----------------------------------------------------------------------------
    def _advance(self, rep: _Rep, t: float) -> None:
        """Run ``rep``'s engine through every step boundary before ``t``.

        A step that admits nobody is followed by identical steps until a sequence finishes,
        so those are jumped over (``BatchEngine.fast_forward``), adding the step time once per
        step so that the times are bit-identical to stepping one by one.
        """
        b = rep.boundary
        if b >= t:
            return
        rep.dirty = True
        engine = rep.engine
        stepping, admitted, d = rep.stepping, rep.admitted, rep.step_s
        if (
            stepping
            and not admitted
            and (not engine.waiting or len(engine.running) >= engine.profile.max_batch)
        ):
            # In a run of identical steps (nobody admitted, and nobody could be since): jump
            # to ``t`` or to the step that finishes a sequence.
            k, most = 0, engine.steps_to_finish() - 1
            while k < most and b < t:
                b += d
                k += 1
            engine.fast_forward(k)
        while b < t:
            if stepping:
                finished = engine.finish_step()
                if admitted:
                    # First tokens; NaN means none yet (a continuation keeps its first).
                    ttft, arrival, budget = self.ttft, self.arrival, self.budget
                    learns = self.learns
                    for sid in admitted:
                        i = int(sid)
                        if ttft[i] != ttft[i]:
                            ttft[i] = b - arrival[i]
                            if learns[i]:
                                self.headroom = tune_headroom(
                                    self.headroom, ttft[i] <= budget[i], self.routing_params
                                )
                            if self.learning:
                                at, predicted, _ = self.routed[i]
                                self._observed(rep, (b - at, predicted), None)
                if finished:
                    self._finished(finished, b, rep)
            if engine.running or engine.waiting:
                d, _, admitted = engine.begin_step()
                stepping = True
                b += d
                if not admitted and b < t:
                    k, most = 0, engine.steps_to_finish() - 1
                    while k < most and b < t:
                        b += d
                        k += 1
                    engine.fast_forward(k)
            else:
                stepping, admitted = False, ()
                if rep.state is _DRAINING:
                    rep.stepping, rep.admitted, rep.boundary = False, (), _INF
                    self._gone(rep, b)
                    return
                b = _INF
        rep.stepping, rep.admitted, rep.boundary, rep.step_s = stepping, admitted, b, d

    def _finished(self, finished: list[EngineSequence], t: float, rep: _Rep) -> None:
        """Record sequences that got their last token at ``t``."""
        for seq in finished:
            i = int(seq.id)
            if self.learning and not self.continued[i] and seq.generated >= 3:
                per_token = (t - self.arrival[i] - self.ttft[i]) / (seq.generated - 1)
                self._observed(rep, None, (per_token, self.routed[i][2]))
            self.e2e[i] = t - self.arrival[i]
            self.produced[i] += seq.generated
            self.status[i] = _OK
            self.unresolved -= 1
        self.last_done = max(self.last_done, t)

    def _observed(
        self, rep: _Rep, ttft: tuple[float, float] | None, per_token: tuple[float, float] | None
    ) -> None:
        """As :meth:`fleetpilot.gateway.fleet.LiveFleet.observed`."""
        for r in self.corrections.observe(rep.pool_idx, rep, rep.learnt, ttft, per_token):
            r.relearnt()

    # -- lifecycle --------------------------------------------------------------------------
    def _launch(self, p: int, at_once: bool = False) -> _Rep:
        """A new replica of pool ``p``, billed from now and ready after its start-up delay
        (the caller makes it ready ``at_once`` for the initial fleet)."""
        now = self.loop.now
        pool = self.pools[p]
        profile = pool.profile
        assert profile is not None
        runs = self.executed.get(pool.name, profile)
        rep = _Rep(len(self.reps), p, pool, profile, self.new_engine(runs), now)
        if self.learning and self.corrections.join(p, rep, rep.learnt):
            rep.relearnt()
        self.reps.append(rep)
        self.by_id[rep.id] = rep
        self.live.append(rep)
        self.active[p].append(rep)
        off = pool.offering
        if not at_once:
            self.loop.schedule(now + off.startup_s, self._ready, rep)
        if pool.name in self.by_rate and off.interruption_rate > 0:
            life = self.lifetimes.expovariate(off.interruption_rate / 3600.0)
            self.loop.schedule(now + life, self._notice, rep)
        return rep

    def _ready(self, rep: _Rep) -> None:
        if rep.state is not _STARTING:
            return
        rep.state = _READY
        rep.ready_at = self.loop.now
        rep.dirty = True
        if rep.pool.model == self.model:
            bisect.insort(self.routable, rep, key=lambda r: r.index)
            parked, self.parked = self.parked, []
            for i in parked:
                self._route(i)

    def _drain(self, rep: _Rep) -> None:
        """No new work for ``rep``; it is gone once its engine is empty (at once if starting)."""
        now = self.loop.now
        if rep.state is _STARTING:
            self._gone(rep, now)
            return
        self._advance(rep, now)  # while still ready: an engine idle since earlier is gone *now*
        if rep.state is _READY:
            self.routable.remove(rep)
            self.active[rep.pool_idx].remove(rep)
            rep.state = _DRAINING
            rep.drained_at = now
            rep.dirty = True
            if not rep.engine.busy:
                self._gone(rep, now)

    def _gone(self, rep: _Rep, t: float) -> None:
        if rep.state is _READY:
            self.routable.remove(rep)
        if rep in self.active[rep.pool_idx]:
            self.active[rep.pool_idx].remove(rep)
        self.corrections.leave(rep.pool_idx, rep)
        rep.state = _GONE
        rep.gone_at = t
        rep.drained_at = min(rep.drained_at, t)
        rep.boundary = _INF
        rep.dirty = True
        self.live.remove(rep)

    def _reconcile(self, p: int) -> None:
        """Start or drain replicas so that pool ``p`` has its target (within quota)."""
        active = self.active[p]
        want = self.pools[p].offering.within_quota(self.targets[p])
        for _ in range(want - len(active)):
            self._launch(p)
        if len(active) > want:
            now = self.loop.now
            for rep in active:
                self._advance(rep, now)
            order = sorted(
                active,
                key=lambda r: (r.state is not _STARTING, r.engine.busy, _in_flight(r), -r.index),
            )
            for rep in order[: len(active) - want]:
                self._drain(rep)

    # -- spot pre-emption -------------------------------------------------------------------
    def _preempt_pool(self, p: int) -> None:
        candidates = self.active[p]
        if candidates:
            self._notice(candidates[self.victims.randrange(len(candidates))])

    def _notice(self, rep: _Rep) -> None:
        if rep.state is _GONE or rep.noticed:
            return
        rep.noticed = True
        now = self.loop.now
        self.preempt_times.append(now)
        self._drain(rep)
        if rep.state is not _GONE:
            self.loop.schedule(now + self.notice_s, self._evict, rep)
        self._reconcile(rep.pool_idx)

    def _evict(self, rep: _Rep) -> None:
        """The notice ran out: whatever is still on ``rep`` is continued elsewhere."""
        now = self.loop.now
        self._advance(rep, now)
        if rep.state is _GONE:
            return
        engine = rep.engine
        stranded = engine.sequences()
        self._gone(rep, now)
        for seq in stranded:
            i = int(seq.id)
            self.produced[i] += seq.generated
            self.continued[i] += 1
            self.continuations += 1
            self._route(i)

    # -- capacity policy --------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.loop.now
        assert self.policy is not None
        for rep in list(self.live):
            self._advance(rep, now)
        plan, self.policy_state = self.policy(self._snapshot(now), self.policy_state, self.params)
        self.control_ticks += 1
        for name, target in sorted(plan.targets.items()):
            self.targets[self._pool_of(name)] = max(int(target), 0)
        self.plan_shed = tuple(plan.shed)
        for p in range(len(self.pools)):
            self._reconcile(p)
        self.window_arrivals = []
        self.last_tick = now
        if now + self.interval <= self.last_arrival:
            self.loop.schedule(now + self.interval, self._tick)

    def _snapshot(self, now: float) -> Snapshot:
        window = [self.trace[i] for i in self.window_arrivals]
        span = now - self.last_tick
        in_flight = sum(_in_flight(r) for r in self.live if r.pool.model == self.model)
        in_flight += len(self.parked)
        self.bursts.flush(now)
        counts = [a - b for a, b in zip(self.bursts.counts, self.bursts_seen, strict=True)]
        self.bursts_seen = list(self.bursts.counts)
        if window and span > 0:
            n = len(window)
            demand = Demand(
                burst_excess=excess(counts, n / span),
                rps=n / span,
                mean_prompt_tokens=sum(r.prompt_tokens for r in window) / n,
                mean_output_tokens=sum(r.max_tokens for r in window) / n,
                in_flight=in_flight,
                batch_share=sum(r.service_class is ServiceClass.BATCH for r in window) / n,
            )
        else:
            demand = Demand(in_flight=in_flight)
        pools = tuple(replace(p, target=t) for p, t in zip(self.pools, self.targets, strict=True))
        replicas = tuple(r.frozen() for r in self.live)
        return Snapshot(
            now, replicas, self.control_ticks, pools, {self.model: demand}, replicas_reported=True
        )

    # -- results ----------------------------------------------------------------------------
    def result(self, window_s: float) -> SimResult:
        end = self.end
        records = tuple(
            ReplicaRecord(
                r.id,
                r.pool.name,
                r.pool.offering.capacity_class,
                r.pool.offering.price_per_hour,
                r.started,
                r.ready_at,
                min(r.drained_at, end),
                min(r.gone_at, end),
                r.noticed,
            )
            for r in self.reps
        )
        cost_by_pool = {p.name: 0.0 for p in self.pools}
        for r in records:
            cost_by_pool[r.pool] += max(r.gone_at - r.started, 0.0) / 3600 * r.price_per_hour
        status = np.array(self.status, dtype=np.int8)
        tokens = np.array(self.produced, dtype=np.int64)
        classes = np.array([_CLASSES.index(r.service_class) for r in self.trace], dtype=np.int8)
        arrival = np.array(self.arrival, dtype=np.float64)
        ttft = np.array(self.ttft, dtype=np.float64)
        return SimResult(
            pool_names=tuple(p.name for p in self.pools),
            ttft_slo_s=self.slo,
            arrival=arrival,
            ttft=ttft,
            e2e=np.array(self.e2e, dtype=np.float64),
            status=status,
            pool=np.array(self.served, dtype=np.int16),
            continued=np.array(self.continued, dtype=np.int16),
            service_class=classes,
            output_tokens=tokens,
            duration_s=end,
            preemptions=len(self.preempt_times),
            continuations=self.continuations,
            cost_by_pool=cost_by_pool,
            replicas=records,
            timeline=_timeline(records, arrival, ttft, classes, self.preempt_times, end, window_s),
            shed_reasons=dict(self.shed_reasons),
            lost_reasons=dict(self.lost_reasons),
        )


def _in_flight(rep: _Rep) -> int:
    return len(rep.engine.running) + len(rep.engine.waiting)


def _coverage(
    starts: np.ndarray, ends: np.ndarray, weights: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """Σ weight × |[start, end) ∩ window| for consecutive windows between ``edges``."""
    if not len(starts):
        return np.zeros(len(edges) - 1)

    def integral(points: np.ndarray) -> np.ndarray:  # Σ w (x - p)+ at every edge x
        order = np.argsort(points, kind="stable")
        p, w = points[order], weights[order]
        cw = np.concatenate(([0.0], np.cumsum(w)))
        cwp = np.concatenate(([0.0], np.cumsum(w * p)))
        k = np.searchsorted(p, edges, side="right")
        return np.asarray(edges * cw[k] - cwp[k])

    return np.diff(integral(starts) - integral(ends))


def _timeline(
    records: tuple[ReplicaRecord, ...],
    arrival: np.ndarray,
    ttft: np.ndarray,
    classes: np.ndarray,
    preempt_times: list[float],
    end: float,
    window_s: float,
) -> Timeline:
    n_win = max(math.ceil(end / window_s), 1)
    edges = np.arange(n_win + 1, dtype=np.float64) * window_s
    ready: dict[str, np.ndarray] = {}
    for cls in CapacityClass:
        rs = [r for r in records if r.capacity_class is cls and r.ready_at < r.drained_at]
        a = np.array([r.ready_at for r in rs], dtype=np.float64)
        b = np.array([r.drained_at for r in rs], dtype=np.float64)
        ready[cls.value] = _coverage(a, b, np.ones(len(rs)), edges) / window_s
    starts = np.array([r.started for r in records], dtype=np.float64)
    ends = np.array([r.gone_at for r in records], dtype=np.float64)
    prices = np.array([r.price_per_hour for r in records], dtype=np.float64)
    cost_rate = _coverage(starts, ends, prices, edges) / window_s
    win = np.minimum((arrival / window_s).astype(np.int64), n_win - 1)
    p99 = np.full(n_win, np.nan)
    mask = (classes == 0) & ~np.isnan(ttft)
    if mask.any():
        w, v = win[mask], ttft[mask]
        order = np.argsort(w, kind="stable")
        w, v = w[order], v[order]
        cuts = np.flatnonzero(np.diff(w)) + 1
        for group_w, group_v in zip(np.split(w, cuts), np.split(v, cuts), strict=True):
            p99[group_w[0]] = np.percentile(group_v, 99)
    pre = np.array(preempt_times, dtype=np.float64)
    pre_win = np.minimum((pre / window_s).astype(np.int64), n_win - 1)
    return Timeline(
        window_s=window_s,
        start=edges[:-1],
        arrivals=np.bincount(win, minlength=n_win),
        ready=ready,
        cost_per_hour=cost_rate,
        p99_ttft=p99,
        preemptions=np.bincount(pre_win, minlength=n_win),
    )
