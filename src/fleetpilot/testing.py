"""Fakes for testing your own integrations with fleetpilot, as httpx and trio ship theirs.

* :func:`start_emulator` / :class:`EmulatorOptions`: a real OpenAI-compatible replica on
  loopback whose latencies follow the perf model, with faults on demand (refuse, 500, hang,
  die after N tokens, slow down);
* :func:`create_app`: the gateway app, to run in your test's event loop in front of them;
* :class:`ManualClock`: time that moves only when told;
* :class:`DryRunActuator`: a capacity actuator that records plans instead of applying them.
"""

from fleetpilot.clock import ManualClock
from fleetpilot.controller.actuators.dry_run import DryRunActuator
from fleetpilot.emulator import EmulatorOptions, RunningEmulator, start_emulator
from fleetpilot.gateway.server import create_app

__all__ = [
    "DryRunActuator",
    "EmulatorOptions",
    "ManualClock",
    "RunningEmulator",
    "create_app",
    "start_emulator",
]
