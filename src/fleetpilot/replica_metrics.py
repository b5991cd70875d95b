"""Reading a replica's Prometheus ``/metrics`` (vLLM's names; the emulator uses them too)."""

from __future__ import annotations

import contextlib

__all__ = ["in_flight"]

_IN_FLIGHT = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def in_flight(text: str) -> int:
    """Requests running plus waiting on the replica, summed over its label sets."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(_IN_FLIGHT):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return int(total)
