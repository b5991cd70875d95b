"""The control plane: observe demand, plan capacity, actuate — one active controller at a time.

- :mod:`.loop` — :class:`Controller`, the live loop around a pure capacity policy;
- :mod:`.actuators` — how a Plan becomes replicas (local processes, Kubernetes, dry run);
- :mod:`.observe` — demand from the gateway, and the gateway's membership from the actuator;
- :mod:`.lease` — leader lease (in-process or Redis);
- :mod:`.admin` — the gateway endpoints an out-of-process membership sync talks to.
"""

from fleetpilot.controller.actuators import (
    Actuator,
    DryRunActuator,
    LocalActuator,
    PreemptionNotice,
    SpotPlay,
)
from fleetpilot.controller.lease import InProcessLease, Lease, LeaseTable, RedisLease, StoreLease
from fleetpilot.controller.loop import CapacityPolicy, Controller, Step, capacity_policy
from fleetpilot.controller.observe import (
    FleetMembership,
    FleetObserver,
    HttpMembership,
    MetricsObserver,
)

__all__ = [
    "Actuator",
    "CapacityPolicy",
    "Controller",
    "DryRunActuator",
    "FleetMembership",
    "FleetObserver",
    "HttpMembership",
    "InProcessLease",
    "Lease",
    "LeaseTable",
    "LocalActuator",
    "MetricsObserver",
    "PreemptionNotice",
    "RedisLease",
    "SpotPlay",
    "Step",
    "StoreLease",
    "capacity_policy",
]
