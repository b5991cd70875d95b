"""Simulators: replay traffic through the same policy code that runs live.

:mod:`~fleetpilot.sim.fluid` simulates weeks of per-window traffic in a second;
:mod:`~fleetpilot.sim.optimum` is the offline optimum (a lower bound on cost) it is compared
with; :mod:`~fleetpilot.sim.request_level` replays request by request.
"""

from fleetpilot.sim.fluid import FluidResult, WindowSeries
from fleetpilot.sim.fluid import simulate as simulate_fluid
from fleetpilot.sim.optimum import OptimumResult, hedged_optimum, offline_optimum

__all__ = [
    "FluidResult",
    "OptimumResult",
    "WindowSeries",
    "hedged_optimum",
    "offline_optimum",
    "simulate_fluid",
]
