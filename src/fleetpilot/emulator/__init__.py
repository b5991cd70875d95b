"""The replica emulator: an OpenAI-compatible server that runs the perf model in real time.

It is fleetpilot's fake upstream (STYLE.md, "fakes over mocks"): a real server on loopback
whose latencies are what :mod:`fleetpilot.core.perf` predicts, with faults on demand.
"""

from fleetpilot.emulator.engine import EmulatedReplica, Generation, ReplicaStopped
from fleetpilot.emulator.faults import Fault, FaultSetting
from fleetpilot.emulator.server import (
    DIE_EXIT_CODE,
    EmulatorOptions,
    RunningEmulator,
    run_emulator,
    start_emulator,
)

__all__ = [
    "DIE_EXIT_CODE",
    "EmulatedReplica",
    "EmulatorOptions",
    "Fault",
    "FaultSetting",
    "Generation",
    "ReplicaStopped",
    "RunningEmulator",
    "run_emulator",
    "start_emulator",
]
