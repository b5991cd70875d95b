"""Helpers for tests that drive the replica emulator: a subprocess launcher, a timed
streaming client, and a virtual-time replay of the perf model to predict what a run should
measure."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import openai

from fleetpilot.core.model import Profile
from fleetpilot.core.perf import BatchEngine
from fleetpilot.core.perf import Sequence as Seq

MODEL = "llama-3.1-8b"


def free_port() -> int:
    """A port that was free a moment ago (bind port 0 and let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmulatorProcess:
    proc: subprocess.Popen[str]
    url: str
    banner: str

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@contextlib.contextmanager
def emulator_process(*args: str, port: int = 0, ready_s: float = 30.0) -> Iterator[EmulatorProcess]:
    """``python -m fleetpilot emulate --port PORT ARGS``; yields once it says it listens."""
    cmd = [sys.executable, "-m", "fleetpilot", "emulate", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + ready_s
        line = ""
        while "listening on" not in line:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
            if not ready or proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
                raise RuntimeError(f"emulator did not start: {line!r} {err}")
            line = proc.stdout.readline()
        yield EmulatorProcess(proc, line.rsplit(" ", 1)[1].strip(), line.strip())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@dataclass
class Timed:
    """One streamed chat request as the client saw it (``time.perf_counter`` seconds)."""

    sent: float
    token_at: list[float] = field(default_factory=list)
    text: str = ""

    @property
    def ttft(self) -> float:
        return self.token_at[0] - self.sent

    @property
    def itl(self) -> float:
        """Mean time between successive tokens."""
        return (self.token_at[-1] - self.token_at[0]) / (len(self.token_at) - 1)


async def timed_chat(
    client: openai.AsyncOpenAI, prompt: str, max_tokens: int, *, at: float | None = None
) -> Timed:
    """Stream one chat completion, sent at ``at`` (perf_counter) if given; time each token."""
    if at is not None:
        await _sleep_until(at)
    got = Timed(sent=time.perf_counter())
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        stream=True,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got.token_at.append(time.perf_counter())
            got.text += chunk.choices[0].delta.content
    return got


async def _sleep_until(at: float) -> None:
    import asyncio

    await asyncio.sleep(max(at - time.perf_counter(), 0.0))


# ---------------------------------------------------------------------------------------------
# What the perf model says a scenario should measure


@dataclass(frozen=True)
class Arrival:
    at: float  # modelled seconds
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class StepRecord:
    start: float
    end: float
    batch: int
    admitted: tuple[int, ...]


@dataclass
class Replay:
    token_at: list[list[float]]
    steps: list[StepRecord]

    def ttft(self, i: int, arrivals: Sequence[Arrival]) -> float:
        return self.token_at[i][0] - arrivals[i].at

    def itl(self, i: int) -> float:
        times = self.token_at[i]
        return (times[-1] - times[0]) / (len(times) - 1)


def replay(profile: Profile, arrivals: Sequence[Arrival]) -> Replay:
    """Run :class:`BatchEngine` in virtual time over ``arrivals``, as the simulator would:
    an idle replica starts a step at the arrival that wakes it, anyone arriving during a
    step joins at the next step boundary."""
    engine = BatchEngine(profile)
    order = sorted(range(len(arrivals)), key=lambda i: arrivals[i].at)
    token_at: list[list[float]] = [[] for _ in arrivals]
    steps: list[StepRecord] = []
    now, k = 0.0, 0
    while k < len(order) or engine.busy:
        if not engine.busy:
            now = max(now, arrivals[order[k]].at)
        while k < len(order) and arrivals[order[k]].at <= now:
            a = arrivals[order[k]]
            engine.add(Seq(str(order[k]), a.prompt_tokens, a.max_tokens))
            k += 1
        step = engine.begin_step()
        end = now + step.duration
        for seq in engine.end_step():
            token_at[int(seq.id)].append(end)
        steps.append(StepRecord(now, end, step.batch, tuple(int(s) for s in step.admitted)))
        now = end
    return Replay(token_at, steps)
