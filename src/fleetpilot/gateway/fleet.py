"""The gateway's live view of the fleet: load, health and cost of every replica.

Routing policies need a frozen :class:`~fleetpilot.core.model.Snapshot`; keeping frozen
values up to date on every token would be wasteful, so each replica keeps mutable counters
here (:class:`LiveReplica`) and its frozen ``Replica`` is rebuilt only when a counter changed
since the last snapshot.

Health: a replica that fails (connection refused, 5xx, died mid-stream, failed an active
health check) is *ejected* for a cool-down that doubles on each consecutive failure up to a
ceiling and resets on success.  When the cool-down ends it is routable again (half-open): the
next failure ejects it for longer.

Cost: a replica costs its price for every second it is ready.  That time is split equally
among the requests in flight on it (an integral of price / in_flight, read at a request's start
and end); seconds with nothing in flight are *idle* cost.  So a request's attributed cost is
lower on a busy, cheap replica — what the ``cost_slo`` policy aims for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from fleetpilot.clock import Clock
from fleetpilot.core.burstiness import BurstMeter
from fleetpilot.core.correction import Correction, Learnt, PoolCorrections
from fleetpilot.core.model import Pool, Replica, ReplicaLoad, ReplicaState, Snapshot
from fleetpilot.core.routing import RoutingParams, tune_headroom
from fleetpilot.engines import Engine, engine

__all__ = ["Lease", "LiveFleet", "LiveReplica"]


@dataclass(slots=True)
class LiveReplica:
    """Mutable counters behind one replica; ``frozen()`` gives the policy's view."""

    base: Replica
    in_flight: int = 0
    prompt_tokens_pending: int = 0  # prompts sent but not yet answered with a first token
    remaining_tokens: int = 0  # output tokens still owed to requests in flight
    cooldown_until: float = 0.0
    failures: int = 0  # consecutive
    state: ReplicaState = ReplicaState.READY
    # other gateways' requests on it: shared through the store, or scraped from its /metrics
    others_in_flight: int = 0
    others_prefill: int = 0  # their prompt tokens not yet answered with a first token
    others_remaining: int = 0  # their output tokens still owed
    # cost integral
    share_integral: float = 0.0
    idle_cost: float = 0.0
    last_t: float = 0.0
    engine: Engine = field(default_factory=lambda: engine("auto"))  # its kind's adapter
    # the profile as configured and what its timings taught (fleetpilot.core.correction)
    learnt: Learnt = field(init=False)
    _view: Replica | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.learnt = Learnt(self.base.profile)

    @property
    def id(self) -> str:
        return self.base.id

    def healthy(self, now: float) -> bool:
        return now >= self.cooldown_until

    def frozen(self, now: float) -> Replica:
        healthy = self.healthy(now)
        view = self._view
        if view is None or view.healthy != healthy:
            n = self.in_flight + self.others_in_flight
            cap = self.base.profile.max_batch
            load = ReplicaLoad(
                running=min(n, cap),
                waiting=max(0, n - cap),
                pending_prefill_tokens=self.prompt_tokens_pending + self.others_prefill,
                remaining_decode_tokens=self.remaining_tokens + self.others_remaining,
            )
            view = replace(self.base, load=load, state=self.state, healthy=healthy)
            self._view = view
        return view

    def touch(self) -> None:
        self._view = None

    def relearnt(self) -> None:
        """Route by the learnt profile (it changed)."""
        self.base = replace(self.base, profile=self.learnt.profile)
        self.touch()

    def set_others(self, in_flight: int, prefill: int, remaining: int) -> None:
        """Other gateways' load on this replica (see :mod:`fleetpilot.gateway.shared_load`)."""
        others = (in_flight, prefill, remaining)
        if others != (self.others_in_flight, self.others_prefill, self.others_remaining):
            self.others_in_flight, self.others_prefill, self.others_remaining = others
            self.touch()

    def scraped(self, total: int, ours_before: int) -> None:
        """The replica reported ``total`` requests in flight while this gateway had between
        ``ours_before`` (when it asked) and ``in_flight`` (now) there: the rest are other
        gateways'.  The fewer of ours is taken, so others are never undercounted; a replica's
        metrics do not say how much of their work is left, so it is guessed at the mean of
        ours (or 128 output tokens each)."""
        others = max(0, total - min(ours_before, self.in_flight))
        mean = self.remaining_tokens / self.in_flight if self.in_flight else 128.0
        self.set_others(others, 0, round(others * mean))

    def accrue(self, now: float) -> None:
        dt = now - self.last_t
        if dt > 0 and self.state is not ReplicaState.GONE:
            price_s = self.base.offering.price_per_hour / 3600.0
            if self.in_flight:
                self.share_integral += dt * price_s / self.in_flight
            else:
                self.idle_cost += dt * price_s
        self.last_t = now


@dataclass(slots=True)
class Lease:
    """A request's hold on a replica; ``release()`` returns its attributed cost in dollars."""

    fleet: LiveFleet
    replica: LiveReplica
    prompt_tokens: int
    max_tokens: int
    started_integral: float
    first_token_seen: bool = False
    produced: int = 0
    released: bool = False

    def first_token(self) -> None:
        if not self.first_token_seen:
            self.first_token_seen = True
            self.replica.prompt_tokens_pending -= self.prompt_tokens
            self.replica.touch()

    def tokens(self, n: int) -> None:
        """Note ``n`` output tokens received, so the remaining-work estimate shrinks."""
        n = min(n, self.max_tokens - self.produced)
        if n > 0:
            self.produced += n
            self.replica.remaining_tokens -= n
            self.replica.touch()

    def release(self) -> float:
        if self.released:
            return 0.0
        self.released = True
        r = self.replica
        r.accrue(self.fleet.clock.now())
        cost = r.share_integral - self.started_integral
        r.in_flight -= 1
        r.remaining_tokens -= self.max_tokens - self.produced
        if not self.first_token_seen:
            r.prompt_tokens_pending -= self.prompt_tokens
        r.touch()
        self.fleet._changed()
        return cost


class LiveFleet:
    """Replicas by model, their live counters, and the events engines wait on."""

    def __init__(
        self,
        clock: Clock,
        pools: Iterable[Pool],
        replicas: Iterable[Replica],
        *,
        cooldown_s: float = 2.0,
        max_cooldown_s: float = 60.0,
    ) -> None:
        self.clock = clock
        self.pools = {p.name: p for p in pools}
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._by_id: dict[str, LiveReplica] = {}
        self._by_model: dict[str, list[LiveReplica]] = {}
        self._context: dict[str, int] = {}  # model -> the longest context a replica serves
        self._tick = 0
        self._headroom: dict[str, float] = {}  # model → the router's learnt headroom
        self._corrections: PoolCorrections[str] = PoolCorrections()
        self._bursts: dict[str, BurstMeter] = {}  # model → arrivals by 2-s bucket rate
        self._change = asyncio.Event()
        for r in replicas:
            self.add(r)

    # -- membership -------------------------------------------------------------------------
    def add(self, replica: Replica) -> None:
        if replica.id in self._by_id:
            raise ValueError(f"replica {replica.id} already in the fleet")
        live = LiveReplica(
            replica,
            state=replica.state,
            last_t=self.clock.now(),
            engine=engine(replica.engine),
        )
        self._by_id[replica.id] = live
        self._by_model.setdefault(replica.model, []).append(live)
        if self._corrections.join(replica.pool, replica.id, live.learnt):
            live.relearnt()
        self._context_of(replica.model)
        self._changed()

    def remove(self, replica_id: str) -> None:
        live = self._by_id.pop(replica_id)
        live.accrue(self.clock.now())
        live.state = ReplicaState.GONE
        self._by_model[live.base.model].remove(live)
        self._corrections.leave(live.base.pool, replica_id)
        self._context_of(live.base.model)
        self._changed()

    def find(self, key: str) -> LiveReplica | None:
        """A replica by id or by URL."""
        if key in self._by_id:
            return self._by_id[key]
        key = key.rstrip("/")
        return next((r for r in self._by_id.values() if r.base.url == key), None)

    def get(self, replica_id: str) -> LiveReplica:
        return self._by_id[replica_id]

    @property
    def replicas(self) -> list[LiveReplica]:
        return list(self._by_id.values())

    @property
    def models(self) -> list[str]:
        return sorted(m for m, rs in self._by_model.items() if rs)

    def serves(self, model: str) -> bool:
        return bool(self._by_model.get(model))

    def context_tokens(self, model: str) -> int:
        """The longest context any replica of ``model`` serves (0: none serves it)."""
        return self._context.get(model, 0)

    def _context_of(self, model: str) -> None:
        """Recount ``model``'s context on a change of membership, not on every request."""
        reps = self._by_model.get(model, ())
        self._context[model] = max((r.base.profile.context_tokens for r in reps), default=0)

    def set_engine(self, replica_id: str, kind: str) -> None:
        """What engine serves the replica, once detected (see :func:`fleetpilot.engines.detect`)."""
        live = self._by_id.get(replica_id)
        if live is not None:
            live.base = replace(live.base, engine=kind)
            live.engine = engine(kind)
            live.touch()

    def set_state(self, replica_id: str, state: ReplicaState) -> None:
        live = self._by_id[replica_id]
        live.accrue(self.clock.now())
        live.state = state
        live.touch()
        self._changed()

    # -- policy view ------------------------------------------------------------------------
    def snapshot(self, model: str, exclude: frozenset[str] = frozenset()) -> Snapshot:
        """The policy's view of ``model``'s replicas, less those in ``exclude`` (replicas that
        already failed the request being routed)."""
        now = self.clock.now()
        self._tick += 1
        live = self._by_model.get(model, ())
        if exclude:
            reps = tuple(r.frozen(now) for r in live if r.id not in exclude)
        else:
            reps = tuple(r.frozen(now) for r in live)
        return Snapshot(now=now, replicas=reps, tick=self._tick, headroom=self._headroom.get(model))

    def first_token(self, model: str, met: bool, params: RoutingParams) -> None:
        """An interactive request's first token came within its TTFT budget (``met``) or not:
        the router's headroom for ``model`` learns from it (:func:`tune_headroom`).  Only
        streamed answers show a first token; a non-streamed one arrives whole."""
        learnt = self._headroom.get(model, params.headroom)
        self._headroom[model] = tune_headroom(learnt, met, params)

    def headroom(self, model: str, params: RoutingParams) -> float:
        return self._headroom.get(model, params.headroom)

    def next_recovery(self, model: str) -> float | None:
        """When the earliest cooling-down, non-draining replica of ``model`` is back."""
        times = [
            r.cooldown_until
            for r in self._by_model.get(model, ())
            if r.state is ReplicaState.READY and r.cooldown_until > self.clock.now()
        ]
        return min(times) if times else None

    # -- load -------------------------------------------------------------------------------
    def acquire(self, replica_id: str, prompt_tokens: int, max_tokens: int) -> Lease:
        r = self._by_id[replica_id]
        r.accrue(self.clock.now())
        r.in_flight += 1
        r.prompt_tokens_pending += prompt_tokens
        r.remaining_tokens += max_tokens
        r.touch()
        return Lease(self, r, prompt_tokens, max_tokens, r.share_integral)

    # -- health -----------------------------------------------------------------------------
    def failed(self, replica_id: str) -> float:
        """Eject after a failure; returns the cool-down chosen."""
        r = self._by_id.get(replica_id)
        if r is None:
            return 0.0
        r.failures += 1
        cool: float = min(self.cooldown_s * 2.0 ** (r.failures - 1), self.max_cooldown_s)
        r.cooldown_until = max(r.cooldown_until, self.clock.now() + cool)
        r.touch()
        self._changed()
        return cool

    def recovered(self, replica_id: str) -> None:
        """An active check reached a replica that was unreachable: back in at once."""
        r = self._by_id.get(replica_id)
        if r is not None:
            r.cooldown_until, r.failures = 0.0, 0
            r.touch()
            self._changed()

    def succeeded(self, replica_id: str) -> None:
        r = self._by_id.get(replica_id)
        if r is not None and r.failures:
            r.failures = 0
            r.touch()

    # -- waiting ----------------------------------------------------------------------------
    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        """Return when membership, health or load changes, or after ``timeout`` seconds."""
        event = self._change
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=self.clock.real_seconds(max(timeout, 0.0)))

    def observed(
        self,
        replica_id: str,
        ttft: tuple[float, float] | None,
        per_token: tuple[float, float] | None,
    ) -> None:
        """A stream's timings on ``replica_id`` (see :mod:`fleetpilot.core.correction`): its
        own correction learns, so does its pool's, and replicas of the pool with no timings
        of their own follow the pool's."""
        live = self._by_id.get(replica_id)
        if live is None:
            return
        pool = live.base.pool
        for rid in self._corrections.observe(pool, replica_id, live.learnt, ttft, per_token):
            self._by_id[rid].relearnt()

    def arrived(self, model: str) -> None:
        """Count one request for ``model`` into its burst meter (core.burstiness)."""
        meter = self._bursts.get(model)
        if meter is None:
            meter = self._bursts[model] = BurstMeter()
        meter.add(self.clock.now())

    def bursts(self) -> dict[str, list[int]]:
        """Per model: requests by the rate of the 2-s bucket they arrived in, so far."""
        now = self.clock.now()
        for meter in self._bursts.values():
            meter.flush(now)
        return {m: list(meter.counts) for m, meter in self._bursts.items()}

    def corrections(self) -> dict[str, Correction]:
        """Per replica: how far its timings have moved its profile."""
        return {r.id: r.learnt.correction for r in self._by_id.values()}

    def idle_costs(self) -> dict[str, float]:
        """Per pool: dollars of ready replica time with nothing in flight, so far."""
        now = self.clock.now()
        out: dict[str, float] = {}
        for r in self._by_id.values():
            r.accrue(now)
            out[r.base.pool] = out.get(r.base.pool, 0.0) + r.idle_cost
        return out
