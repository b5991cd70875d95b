"""Run the perf model's :class:`~fleetpilot.core.perf.BatchEngine` in real time.

One asyncio task per replica drives the engine while it has work: ``begin_step()`` says how
long the step lasts, the task sleeps until the step's end, ``end_step()`` hands every running
sequence its next token and the task delivers those tokens to the sequences' queues.  A
request that arrives mid-step is admitted at the next step boundary, as vLLM's
iteration-level scheduler does it.

Each step ends at an absolute deadline (its start plus ``duration * time_scale``), so a late
wake-up shortens the next sleep instead of delaying every later token: lag never accumulates.
A replica that falls idle starts its next step at the arrival that wakes it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from fleetpilot.clock import Clock, SystemClock
from fleetpilot.core.model import Profile, ReplicaLoad
from fleetpilot.core.perf import BatchEngine, Sequence

__all__ = ["EmulatedReplica", "Generation", "ReplicaStopped"]

_STOPPED = -1


class ReplicaStopped(Exception):
    """The replica was closed while a generation was still running."""


class Generation:
    """The output of one submitted sequence, as it is produced.

    ``async for i in generation`` yields the index of each new token (0, 1, …, max_tokens-1)
    at the moment its step ends.
    """

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.delivered = 0
        self._queue: asyncio.Queue[int] = asyncio.Queue()

    @property
    def id(self) -> str:
        return self.seq.id

    @property
    def max_tokens(self) -> int:
        return self.seq.max_tokens

    @property
    def done(self) -> bool:
        return self.delivered >= self.seq.max_tokens

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        if self.done:
            raise StopAsyncIteration
        generated = await self._queue.get()
        if generated == _STOPPED:
            raise ReplicaStopped(f"replica stopped during {self.id}")
        self.delivered = generated
        return generated - 1

    def _put(self, generated: int) -> None:
        self._queue.put_nowait(generated)


class EmulatedReplica:
    """One replica: a batch engine and the task that runs its steps in (scaled) real time.

    ``time_scale`` is real seconds per modelled second (0.1 runs ten times faster).
    """

    def __init__(self, profile: Profile, *, time_scale: float = 1.0, clock: Clock | None = None):
        if not time_scale > 0:
            raise ValueError("time_scale must be > 0")
        self.profile = profile
        self.time_scale = time_scale
        self.engine = BatchEngine(profile)
        self._clock: Clock = clock or SystemClock()
        self._live: dict[str, Generation] = {}
        self._ids = itertools.count(1)
        self._work = asyncio.Event()
        self._woken_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def slowdown(self) -> float:
        return self.engine.slowdown

    @slowdown.setter
    def slowdown(self, factor: float) -> None:
        """Applies from the next step on."""
        self.engine.slowdown = factor

    def load(self) -> ReplicaLoad:
        return self.engine.load()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"replica-{self.profile.model}")

    async def close(self) -> None:
        """Stop stepping; every unfinished generation raises :class:`ReplicaStopped`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for gen in self._live.values():
            gen._put(_STOPPED)
            self.engine.cancel(gen.id)
        self._live.clear()

    def submit(self, prompt_tokens: int, max_tokens: int) -> Generation:
        """Queue a sequence; it joins the batch at the next step boundary."""
        seq = Sequence(f"seq-{next(self._ids)}", max(prompt_tokens, 0), max_tokens)
        self.engine.add(seq)  # checks max_tokens >= 1
        gen = Generation(seq)
        self._live[seq.id] = gen
        if not self._work.is_set():
            self._woken_at = self._clock.now()
            self._work.set()
        return gen

    def cancel(self, gen: Generation) -> None:
        """Take a sequence out of the engine (client gone); a finished one is left alone."""
        if self._live.pop(gen.id, None) is not None:
            self.engine.cancel(gen.id)

    async def _run(self) -> None:
        while True:
            if not self.engine.busy:
                self._work.clear()
                await self._work.wait()
            deadline = self._woken_at if self._woken_at is not None else self._clock.now()
            self._woken_at = None
            while self.engine.busy:
                step = self.engine.begin_step()
                deadline += step.duration * self.time_scale
                await self._clock.sleep(deadline - self._clock.now())
                for seq in self.engine.end_step():
                    gen = self._live.get(seq.id)
                    if gen is None:
                        continue
                    gen._put(seq.generated)
                    if seq.done:
                        del self._live[seq.id]
