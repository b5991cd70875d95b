"""Pure policy code: no I/O, no asyncio, no wall clock (a test enforces it).

Everything here takes a :class:`~fleetpilot.core.model.Snapshot` (which carries ``now``) or
plain values and returns values, so the gateway, the controller and the simulator run the
very same decisions.
"""

from fleetpilot.core.model import (
    Accelerator,
    Action,
    CapacityClass,
    Decision,
    Offering,
    Pool,
    Profile,
    Replica,
    ReplicaLoad,
    ReplicaState,
    Request,
    ServiceClass,
    Snapshot,
)
from fleetpilot.core.perf import BatchEngine, Prediction, Sequence, predict, step_time
from fleetpilot.core.routing import DEFAULT_PARAMS, ROUTERS, RoutingParams

__all__ = [
    "DEFAULT_PARAMS",
    "ROUTERS",
    "Accelerator",
    "Action",
    "BatchEngine",
    "CapacityClass",
    "Decision",
    "Offering",
    "Pool",
    "Prediction",
    "Profile",
    "Replica",
    "ReplicaLoad",
    "ReplicaState",
    "Request",
    "RoutingParams",
    "Sequence",
    "ServiceClass",
    "Snapshot",
    "predict",
    "step_time",
]
