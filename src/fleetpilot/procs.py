"""Child processes for demos, benchmarks and tests: start, wait until healthy, stop them all.

``async with Supervisor() as sup:`` guarantees that every child started through ``sup`` is
gone when the block exits, however it exits (an exception, a cancelled task, Ctrl-C): each
gets SIGTERM, then SIGKILL after a grace period.  Children run in their own session so the
terminal's Ctrl-C reaches only the parent, which then stops them in order; on Linux they also
ask the kernel for SIGTERM should the parent die without cleaning up.

A child's stdout and stderr are read continuously (a full pipe would stall it) and the last
lines are kept for error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

from fleetpilot.clock import Clock, SystemClock
from fleetpilot.errors import FleetpilotError
from fleetpilot.llamacpp import LlamaCpp

__all__ = ["Child", "ChildFailed", "Supervisor", "fleetpilot_command", "free_port"]

TAIL_LINES = 40


class ChildFailed(FleetpilotError):
    """A child process exited early or never became healthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fleetpilot_command(*args: str) -> list[str]:
    """``python -m fleetpilot ARGS`` with this interpreter."""
    return [sys.executable, "-m", "fleetpilot", *args]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: have the kernel SIGTERM this process when its parent dies (the parent's
    thread, strictly: start children from the thread that runs the event loop)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(eq=False)
class Child:
    """One started process and the last lines it wrote."""

    name: str
    args: list[str]
    process: asyncio.subprocess.Process
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def last_lines(self, n: int = 15) -> str:
        lines = list(self.tail)[-n:]
        return "\n".join(f"    {line}" for line in lines) if lines else "    (no output)"

    async def _read(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        while line := await stream.readline():
            self.tail.append(line.decode(errors="replace").rstrip())


def _signal(child: Child, sig: signal.Signals) -> None:
    """Signal the child's whole process group (its session), while the child is unreaped."""
    if child.running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)


class Supervisor:
    """Starts children and owns their shutdown."""

    def __init__(self, *, grace_s: float = 5.0, clock: Clock | None = None) -> None:
        self.grace_s = grace_s
        self.clock: Clock = clock or SystemClock()
        self.children: list[Child] = []

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancellation during cleanup must not leave children behind.
        await asyncio.shield(self.stop_all())

    async def start(self, name: str, args: Sequence[str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        child = Child(name, list(args), process)
        child.reader = asyncio.create_task(child._read(), name=f"read-{name}")
        self.children.append(child)
        return child

    async def wait_healthy(self, child: Child, url: str, *, timeout_s: float = 30.0) -> None:
        """Poll ``url`` + ``/health`` until it answers 200; fail fast if the child exits."""
        deadline = self.clock.now() + timeout_s
        last_error = "no answer yet"
        probe = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=probe) as session:
            while True:
                if not child.running:
                    await self._drain_reader(child)
                    raise ChildFailed(
                        f"{child.name} exited with code {child.process.returncode} before "
                        f"{url}/health answered; its last output:\n{child.last_lines()}"
                    )
                try:
                    async with session.get(f"{url}/health") as resp:
                        if resp.status == 200:
                            return
                        last_error = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                if self.clock.now() >= deadline:
                    raise ChildFailed(
                        f"{child.name} did not answer {url}/health within {timeout_s:g}s "
                        f"({last_error}); its last output:\n{child.last_lines()}"
                    )
                await self.clock.sleep(0.1)

    async def start_healthy(
        self, name: str, args: Sequence[str], url: str, *, timeout_s: float = 30.0
    ) -> Child:
        child = await self.start(name, args)
        await self.wait_healthy(child, url, timeout_s=timeout_s)
        return child

    async def emulators(
        self, n: int, *, model: str, accelerator: str, time_scale: float, host: str = "127.0.0.1"
    ) -> list[str]:
        """``n`` emulated replicas (``fleetpilot emulate``), each answering; their URLs."""

        def args(port: int) -> list[str]:
            return fleetpilot_command(
                "emulate", "--model", model, "--accelerator", accelerator, "--host", host,
                "--port", str(port), "--time-scale", f"{time_scale:g}",
            )  # fmt: skip

        return await self._servers(n, "emulator", args, host)

    async def llama_servers(self, n: int, engine: LlamaCpp) -> list[str]:
        """``n`` real llama.cpp replicas (:mod:`fleetpilot.llamacpp`), each answering."""
        return await self._servers(n, "llama-server", engine.command, "127.0.0.1")

    async def _servers(
        self, n: int, kind: str, args: Callable[[int], list[str]], host: str
    ) -> list[str]:
        urls = []
        for _ in range(n):
            port = free_port()
            url = f"http://{host}:{port}"
            await self.start_healthy(f"{kind} {url}", args(port), url)
            urls.append(url)
        return urls

    async def gateway(self, fleet: dict[str, Any], folder: Path, *, host: str = "127.0.0.1") -> str:
        """``fleetpilot gateway`` on ``fleet`` (written to ``folder``, its gateway's host and
        port filled in), answering; its URL."""
        port = free_port()
        fleet = {**fleet, "gateway": {**fleet.get("gateway", {}), "host": host, "port": port}}
        path = folder / "fleet.yaml"
        path.write_text(yaml.safe_dump(fleet, sort_keys=False))
        url = f"http://{host}:{port}"
        await self.start_healthy(
            "gateway", fleetpilot_command("gateway", "--fleet", str(path)), url
        )
        return url

    async def emulated_gateway(
        self,
        folder: Path,
        *,
        model: str,
        time_scale: float,
        host: str = "127.0.0.1",
        gateway: dict[str, Any] | None = None,
        **sections: Any,
    ) -> str:
        """Two emulated A10G replicas of ``model`` behind ``fleetpilot gateway``, with the
        fleet file's other ``sections`` (guard, retrieval, store, tenancy); its URL."""
        urls = await self.emulators(
            2, model=model, accelerator="A10G", time_scale=time_scale, host=host
        )
        fleet = {
            "gateway": {"time_scale": time_scale, "health_interval_s": 0.5, **(gateway or {})},
            "pools": [{"name": "a10g", "model": model, "accelerator": "A10G", "replicas": urls}],
            **sections,
        }
        return await self.gateway(fleet, folder, host=host)

    async def kill(self, child: Child) -> None:
        """SIGKILL at once (a spot pre-emption), and wait until it is gone."""
        _signal(child, signal.SIGKILL)
        await child.process.wait()
        await self._forget(child)

    async def stop(self, child: Child) -> None:
        """SIGTERM, then SIGKILL if it is still there after the grace period."""
        _signal(child, signal.SIGTERM)
        try:
            await asyncio.wait_for(child.process.wait(), self.grace_s)
        except TimeoutError:
            _signal(child, signal.SIGKILL)
            await child.process.wait()
        await self._forget(child)

    async def stop_all(self) -> None:
        children = list(self.children)
        try:
            await asyncio.gather(*(self.stop(c) for c in children), return_exceptions=True)
        finally:  # cancelled half-way: whatever is left goes at once
            for c in children:
                _signal(c, signal.SIGKILL)

    async def _forget(self, child: Child) -> None:
        if child in self.children:
            self.children.remove(child)
        await self._drain_reader(child)

    async def _drain_reader(self, child: Child) -> None:
        if child.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(child.reader, 2.0)
            child.reader = None
