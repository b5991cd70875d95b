"""fleetpilot's vocabulary (see DESIGN.md) as frozen values.

Every engine — gateway, emulator, simulator, controller — speaks in these types, and every
policy in ``core`` reads them and nothing else.  They are frozen so a :class:`Snapshot` handed
to a policy can never change under it, and so the simulator can keep old snapshots around.
Live engines replace a replica's value (``dataclasses.replace``) when its load changes.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field


class CapacityClass(enum.StrEnum):
    RESERVED = "reserved"
    ON_DEMAND = "on_demand"
    SPOT = "spot"


class ServiceClass(enum.StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class ReplicaState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Accelerator:
    """A GPU type; ``memory_bandwidth_gbps`` is what decode speed scales with."""

    name: str
    memory_gb: float
    memory_bandwidth_gbps: float


@dataclass(frozen=True, slots=True)
class Offering:
    """Something that can be bought: ``count`` accelerators of one type in one capacity class.

    ``price_per_hour`` is for the whole replica (all ``count`` GPUs).  ``interruption_rate`` is
    the expected number of spot pre-emptions per replica-hour (0 for other classes).
    ``zones`` is how many availability zones the replicas are spread across, evenly (at most
    one apart): a spot capacity pool is an instance type in one zone, so a spot market event
    takes at most one zone's share, ``ceil(replicas / zones)``.  1: all in one pool.
    ``quota`` is the most replicas the account may run (cloud quotas are per account, raised
    on request); None, the default, means no limit is known and none is applied.
    """

    name: str
    accelerator: str
    capacity_class: CapacityClass
    price_per_hour: float
    count: int = 1
    region: str = "us-east-1"
    quota: int | None = None
    startup_s: float = 180.0
    interruption_rate: float = 0.0
    zones: int = 1

    def within_quota(self, replicas: int) -> int:
        """``replicas``, at least 0 and at most the quota where there is one."""
        n = max(replicas, 0)
        return n if self.quota is None else min(n, max(self.quota, 0))


def interpolate_step(points: tuple[tuple[int, float], ...], batch: int) -> float:
    """Seconds per decode iteration at ``batch``: piecewise linear through ``points``,
    extrapolated from the last two beyond the last."""
    b = max(batch, 1)
    if len(points) == 1 or b <= points[0][0]:
        return points[0][1]
    for (b0, t0), (b1, t1) in itertools.pairwise(points):
        if b <= b1:
            return t0 + (t1 - t0) * (b - b0) / (b1 - b0)
    (b0, t0), (b1, t1) = points[-2], points[-1]
    return t1 + (t1 - t0) * (b - b1) / (b1 - b0)


@dataclass(frozen=True, slots=True)
class Profile:
    """Measured performance of one model on one accelerator offering.

    ``step_points`` are (batch size, seconds per decode iteration) pairs; between points the
    step time is interpolated linearly, beyond the last point it is extrapolated from the last
    two.  ``max_batch`` is how many sequences fit in the KV cache at once.
    ``context_tokens`` is the longest sequence (prompt and output) the engine serves: vLLM's
    ``max_model_len``; the gateway refuses a ``max_tokens`` above it.
    """

    model: str
    accelerator: str
    prefill_rate: float  # prompt tokens per second, whole-prompt prefill
    step_points: tuple[tuple[int, float], ...]
    max_batch: int
    count: int = 1  # accelerators per replica (tensor parallel degree)
    context_tokens: int = 8192
    # step time per batch size 0..max_batch, filled in once: the hot paths (routing, the
    # simulator) look it up instead of interpolating on every call
    step_table: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.step_points:
            raise ValueError(f"profile {self.model}@{self.accelerator} has no step points")
        batches = [b for b, _ in self.step_points]
        if batches != sorted(batches) or len(set(batches)) != len(batches) or batches[0] < 1:
            raise ValueError(f"profile {self.model}@{self.accelerator}: batches must increase")
        if self.prefill_rate <= 0 or self.max_batch < 1:
            raise ValueError(f"profile {self.model}@{self.accelerator}: bad rate or max_batch")
        table = tuple(interpolate_step(self.step_points, b) for b in range(self.max_batch + 1))
        object.__setattr__(self, "step_table", table)


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What a replica is doing now, as far as its observer knows.

    ``running`` sequences are in the batch; ``waiting`` are queued for a KV slot.
    ``pending_prefill_tokens`` is the prompt work of requests not yet started and
    ``remaining_decode_tokens`` the output tokens still owed to everything admitted or queued.
    """

    running: int = 0
    waiting: int = 0
    pending_prefill_tokens: int = 0
    remaining_decode_tokens: int = 0

    @property
    def in_flight(self) -> int:
        return self.running + self.waiting


IDLE = ReplicaLoad()


@dataclass(frozen=True, slots=True)
class Replica:
    """One endpoint of a pool."""

    id: str
    pool: str
    model: str
    url: str
    offering: Offering
    profile: Profile
    state: ReplicaState = ReplicaState.READY
    load: ReplicaLoad = IDLE
    healthy: bool = True
    engine: str = "auto"  # the engine kind serving it (fleetpilot.engines); auto: detect it

    @property
    def routable(self) -> bool:
        return self.state is ReplicaState.READY and self.healthy


@dataclass(frozen=True, slots=True)
class Pool:
    """The replicas of one model on one offering; the controller sets ``target``."""

    name: str
    model: str
    offering: Offering
    target: int = 0
    profile: Profile | None = None


@dataclass(frozen=True, slots=True)
class Demand:
    """Traffic for one model over a window: arrival rate and mean request shape."""

    rps: float = 0.0
    mean_prompt_tokens: float = 256.0
    mean_output_tokens: float = 128.0
    in_flight: int = 0
    batch_share: float = 0.0  # share of requests that are batch work
    # how much burstier than Poisson arrivals were within the window (core.burstiness.excess;
    # None: not measured, e.g. at window level or without the gateway's histogram)
    burst_excess: float | None = None

    @property
    def output_tokens_per_s(self) -> float:
        return self.rps * self.mean_output_tokens


def blend(demands: Sequence[Demand]) -> Demand | None:
    """``demands`` as one: the rates add and the mean lengths are weighted by rate (a model's
    size classes, or windows of history); None when they carry no requests."""
    rps = sum(d.rps for d in demands)
    if rps <= 0:
        return None
    return Demand(
        rps=rps,
        mean_prompt_tokens=sum(d.rps * d.mean_prompt_tokens for d in demands) / rps,
        mean_output_tokens=sum(d.rps * d.mean_output_tokens for d in demands) / rps,
    )


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as policies see it.

    ``deadline`` is the absolute time (same clock as ``Snapshot.now``) by which the first
    token must arrive: the TTFT target.  Batch requests may wait in a queue until it.
    """

    model: str
    prompt_tokens: int
    max_tokens: int
    deadline: float
    tenant: str = "default"
    service_class: ServiceClass = ServiceClass.INTERACTIVE
    arrival: float = 0.0
    # The gateway owes this request an answer it can no longer shed: the rest of a stream the
    # client is reading, or a request that already waited for a replica to recover.  It goes
    # to the fastest replica however late that is.
    must_serve: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet as a policy sees it at ``now``.

    ``tick`` counts routing calls; stateless policies that need rotation or randomness derive
    it from ``tick`` so that they stay pure and replayable.  ``headroom`` is the share of a
    TTFT budget the router may fill, as the engine learnt it from realised first tokens
    (:func:`~fleetpilot.core.routing.tune_headroom`; ``None``: the routing params' own).
    """

    now: float
    replicas: tuple[Replica, ...]
    tick: int = 0
    pools: tuple[Pool, ...] = ()
    demand: dict[str, Demand] = field(default_factory=dict)  # observed, per model
    headroom: float | None = None
    # the engine reports its replicas, so an empty ``replicas`` means none run (a dry run
    # reports none and leaves this False: its targets are taken as running)
    replicas_reported: bool = False

    @property
    def sees_replicas(self) -> bool:
        return self.replicas_reported or bool(self.replicas)


class Action(enum.StrEnum):
    ROUTE = "route"
    SHED = "shed"
    QUEUE = "queue"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Decision:
    """A routing policy's answer, as data: where to send a request, or why not."""

    action: Action
    replica_id: str | None = None
    predicted_ttft: float = 0.0
    predicted_e2e: float = 0.0
    marginal_cost: float = 0.0
    retry_after: float = 0.0
    reason: str = ""
