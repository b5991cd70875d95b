"""Actuators: carry out a Plan (see :mod:`.base` for the seam)."""

from fleetpilot.controller.actuators.base import (
    ACTIVE,
    Actuator,
    NoticeBus,
    PreemptionNotice,
    active_counts,
)
from fleetpilot.controller.actuators.dry_run import DryRunActuator
from fleetpilot.controller.actuators.local import LocalActuator, SpotPlay

__all__ = [
    "ACTIVE",
    "Actuator",
    "DryRunActuator",
    "LocalActuator",
    "NoticeBus",
    "PreemptionNotice",
    "SpotPlay",
    "active_counts",
]
