"""Simulators: replay traffic through the same policy code that runs live.

:mod:`~fleetpilot.sim.fluid` simulates weeks of per-window traffic in a second;
:mod:`~fleetpilot.sim.optimum` has the two yardsticks policies are compared with, both with
perfect knowledge: the offline optimum (a lower bound on cost, with no spot-loss hedge) and the
hedged optimum (the cheapest schedule that keeps the planner's hedge);
:mod:`~fleetpilot.sim.request_level` replays request by request.
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
