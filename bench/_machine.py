"""What else the machine was doing while a benchmark ran: a figure taken while other
processes, or the hypervisor (CPU steal, on a shared virtual machine), took more than a
quarter of a core is printed, and marked, but not judged.  And how fast this machine is
(:func:`reference_ms`), so absolute figures from two machines can be told apart."""

from __future__ import annotations

import time

import psutil

__all__ = ["BUSY_CORES", "OtherLoad", "reference_ms"]

BUSY_CORES = 0.25


def _cpu(names: tuple[str, ...]) -> float:
    """CPU seconds of the processes called ``names`` (servers the benchmark itself drives,
    such as Postgres, whose work is the benchmark's, not other load)."""
    total = 0.0
    for p in psutil.process_iter(["name", "cpu_times"]):
        if p.info["name"] in names and p.info["cpu_times"] is not None:
            total += p.info["cpu_times"].user + p.info["cpu_times"].system
    return total


class OtherLoad:
    """``with OtherLoad() as load: ...``, then ``load.cores`` (other processes, in cores)."""

    def __init__(self, ours: tuple[str, ...] = ()) -> None:
        self.ours = ours

    def __enter__(self) -> OtherLoad:
        self._me = psutil.Process()
        self._t0 = time.perf_counter()
        self._all0, self._mine0 = psutil.cpu_times(), self._me.cpu_times()
        self._servers0 = _cpu(self.ours) if self.ours else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        all1, mine1 = psutil.cpu_times(), self._me.cpu_times()
        busy = (all1.user + all1.system) - (self._all0.user + self._all0.system)
        own = (mine1.user + mine1.system) - (self._mine0.user + self._mine0.system)
        own += sum(
            getattr(mine1, f, 0) - getattr(self._mine0, f, 0)
            for f in ("children_user", "children_system")
        )
        if self.ours:
            own += max(0.0, _cpu(self.ours) - self._servers0)
        self.cores = max(0.0, busy - own) / wall if wall > 0 else 0.0
        steal = getattr(all1, "steal", 0.0) - getattr(self._all0, "steal", 0.0)
        self.steal = max(0.0, steal) / wall if wall > 0 else 0.0

    @property
    def busy(self) -> bool:
        return self.cores + self.steal > BUSY_CORES

    def line(self) -> str:
        note = " (busy machine: not judged)" if self.busy else ""
        return f"other processes: {self.cores:.2f} cores, CPU steal: {self.steal:.2f} cores{note}"


def reference_ms() -> float:
    """The best of five runs of a fixed pure-Python loop (summing a million integers), in
    ms: a yardstick of the machine's single-core speed, printed beside absolute timings."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        sum(range(1_000_000))
        best = min(best, time.perf_counter() - t0)
    return best * 1000
