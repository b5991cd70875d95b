"""What the gateway adds to latency, and what it sustains on one core, beside a direct baseline.

Three kinds of process, each pinned to its own core where the machine has them:

- the *upstream* (``upstream_fixed.py``): answers every chat completion 50 ms after it arrives;
- the *proxy*: one process on a core of its own, in front of that upstream.  In turn: a byte
  relay (the floor any extra hop costs here), one ``python -m fleetpilot gateway`` worker,
  and, when ``LITELLM_PYTHON`` names a Python with ``litellm[proxy]``, LiteLLM's proxy;
- the *client*: a load generator on a raw keep-alive HTTP/1.1 protocol over uvloop, timing
  each request with ``time.perf_counter``.  It is several times cheaper per request than an
  aiohttp client, so at the highest rates the client is not what gets measured.

Every point is measured twice in the same run, directly against the upstream and through the
proxy, at the same concurrency (closed loop) or the same arrival rate (open loop), after a
warm-up on the same connections.  The tables print both and the difference; bench/README.md
explains each column.

    .venv/bin/python bench/gateway_overhead.py [--quick] [--duration S] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upstream_fixed import MODEL, dechunk

HERE = Path(__file__).resolve().parent
_MAX_OPEN_CONNECTIONS = 2048  # an open loop against a proxy that falls behind stops here
TARGETS = {"added_p50_c1_ms": 1.0, "max_rps": 2000.0, "added_p99_rate_ms": 5.0, "rss_mb": 150.0}
HIGH_RATE_P99_MS = 1.0  # added p99 at --rate-high (TensorZero publishes 0.94 ms at 10,000 QPS)
STAGES = {"added_p50_c1_ms": 0.5, "rps_share": 0.70}  # stages on, against the same gateway off
GUARD_ADDED_P50_MS = 0.3  # the guard stage on, against the same gateway off, at concurrency 1


# --------------------------------------------------------------------------- client process


def _request_body(stream: bool) -> bytes:
    messages = [{"role": "user", "content": "Say hello."}]
    return json.dumps(
        {"model": MODEL, "messages": messages, "max_tokens": 16, "stream": stream}
    ).encode()


def _request_bytes(port: int, stream: bool, headers: dict[str, str]) -> bytes:
    body = _request_body(stream)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nAccept: */*\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _parse_response(buf: bytearray) -> tuple[int, bytes, bool] | None:
    """(status, body, keep-alive) once ``buf`` holds a whole response, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, keep = -1, False, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep = b"close" not in value.lower()
    if chunked:
        got = dechunk(bytes(buf), end + 4)
        return None if got is None else (status, got[0], keep)
    if length < 0:
        raise ValueError("response without Content-Length or chunked framing")
    if len(buf) < end + 4 + length:
        return None
    return status, bytes(buf[end + 4 : end + 4 + length]), keep


class _Conn(asyncio.Protocol):
    """One keep-alive client connection; ``request`` resolves to (t_first_byte, t_end, ...)."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[float, float, int, bytes, bool]] | None = None
        self.t_first = 0.0
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def request(self, raw: bytes) -> asyncio.Future[tuple[float, float, int, bytes, bool]]:
        self.buf.clear()
        self.t_first = 0.0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        if not self.t_first:
            end = self.buf.find(b"\r\n\r\n")
            if 0 <= end < len(self.buf) - 4:
                self.t_first = now
        try:
            parsed = _parse_response(self.buf)
        except ValueError as exc:
            self.waiter.set_exception(exc)
            return
        if parsed is not None:
            self.waiter.set_result((self.t_first or now, now, *parsed))


async def _connect(port: int) -> _Conn:
    _, conn = await asyncio.get_running_loop().create_connection(_Conn, "127.0.0.1", port)
    return conn


def _valid(status: int, body: bytes, stream: bool) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:120]!r}"
    if stream:
        return None if b"[DONE]" in body[-40:] else f"stream without [DONE]: {body[-120:]!r}"
    return None if b'"choices"' in body else f"no choices: {body[:120]!r}"


@dataclass
class _Log:
    """Per-request records of one measurement: (start, first byte, end) for successes."""

    stream: bool | str  # True, False or "mixed"
    ok: list[tuple[float, float, float]] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    new_conns: int = 0

    def record(
        self, start: float, res: tuple[float, float, int, bytes, bool], stream: bool | None = None
    ) -> None:
        t_first, t_end, status, body, _ = res
        problem = _valid(status, body, bool(self.stream) if stream is None else stream)
        if problem is None:
            self.ok.append((start, t_first, t_end))
        else:
            self.fail(problem)

    def fail(self, why: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or why


async def _closed_loop(
    spec: dict[str, Any], conns: list[_Conn], log: _Log, t0: float, t_stop: float
) -> None:
    port, kind = spec["port"], spec["stream"]
    # "mixed": each connection alternates non-streamed and streamed requests
    kinds = [False, True] if kind == "mixed" else [bool(kind)]
    raws = [_request_bytes(port, k, spec["headers"]) for k in kinds]

    async def worker(conn: _Conn, turn: int) -> None:
        while time.perf_counter() < t_stop:
            turn += 1
            start = time.perf_counter()
            try:
                res = await conn.request(raws[turn % len(raws)])
            except (ConnectionError, ValueError) as exc:
                log.fail(repr(exc))
                res = None
            if res is not None:
                log.record(start, res, kinds[turn % len(kinds)])
            if conn.closed or res is None or not res[4]:
                conn.transport.close()
                conn = await _connect(port)
                log.new_conns += 1
        conn.transport.close()

    await _bounded([worker(c, i) for i, c in enumerate(conns)], t_stop + spec["grace"], log)


async def _open_loop(
    spec: dict[str, Any], conns: list[_Conn], log: _Log, t0: float, t_stop: float
) -> None:
    port, rate = spec["port"], spec["rate"]
    raw = _request_bytes(port, spec["stream"], spec["headers"])
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    every = list(conns)

    async def one(t_sched: float) -> None:
        if idle.empty() and len(every) < _MAX_OPEN_CONNECTIONS:
            every.append(conn := await _connect(port))
            log.new_conns += 1
        else:  # past the cap, a request waits for a connection (and is charged for it)
            conn = await idle.get()
        try:
            res = await conn.request(raw)
        except (ConnectionError, ValueError) as exc:
            log.fail(repr(exc))
            return
        log.record(t_sched, res)  # latency from the scheduled instant: no coordinated omission
        if not conn.closed and res[4]:
            idle.put_nowait(conn)

    tasks = []
    i = 0
    while (t_sched := t0 + i / rate) < t_stop:
        while (delay := t_sched - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(t_sched)))
        i += 1
    await _bounded(tasks, t_stop + spec["grace"], log)
    for conn in every:
        conn.transport.close()


async def _bounded(aws: list[Any], deadline: float, log: _Log) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    _, pending = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.perf_counter()))
    for t in pending:
        t.cancel()
        log.fail("timed out")
    for out in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(out, Exception):
            log.fail(repr(out))


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(x * 1000 for x in xs)
    return {f"p{int(q * 100)}": _pct(xs, q) for q in (0.5, 0.9, 0.99)} | {
        "max": xs[-1] if xs else float("nan"),
        "mean": sum(xs) / len(xs) if xs else float("nan"),
    }


async def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then measure for ``duration`` s; only requests started in the window count."""
    log = _Log(spec["stream"])
    n = spec["concurrency"] if spec["mode"] == "closed" else spec["prefill"]
    conns = list(await asyncio.gather(*[_connect(spec["port"]) for _ in range(n)]))
    t0 = time.perf_counter() + 0.01
    t_on = t0 + spec["warmup"]
    t_off = t_on + spec["duration"]
    cpu = []

    def mark() -> None:
        cpu.append(time.process_time())

    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + (t_on - time.perf_counter()), mark)
    loop.call_at(loop.time() + (t_off - time.perf_counter()), mark)
    run = _closed_loop if spec["mode"] == "closed" else _open_loop
    await run(spec, conns, log, t0, t_off)
    window = [r for r in log.ok if t_on <= r[0] < t_off]
    done = sum(1 for r in log.ok if t_on <= r[2] < t_off)
    return {
        "window": [t_on, t_off],
        "requests": len(window),
        "rps": done / spec["duration"],
        "latency_ms": _summary([r[2] - r[0] for r in window]),
        "first_byte_ms": _summary([r[1] - r[0] for r in window]),
        "errors": log.errors,
        "first_error": log.first_error,
        "reconnects": log.new_conns,
        "client_cpu": (cpu[1] - cpu[0]) / spec["duration"] if len(cpu) == 2 else None,
    }


async def _measure_paired(spec: dict[str, Any]) -> dict[str, Any]:
    """Concurrency 1, direct and via interleaved: one request at a time, alternating between the
    two targets (ABBA order, so neither always follows the other), for ``duration`` s after a
    warm-up.  Both halves see the same minutes of the machine, so drift in how fast an idle
    core wakes (0.3 to 1.9 ms between windows a minute apart here) no longer lands on one side
    of the difference.  Returns one result per way, shaped like :func:`_measure`'s."""
    ways = spec["ways"]  # [(port, headers), (port, headers)]: direct first
    raws = [_request_bytes(port, spec["stream"], hdrs) for port, hdrs in ways]
    conns = [await _connect(port) for port, _ in ways]
    logs = [_Log(spec["stream"]), _Log(spec["stream"])]
    t0 = time.perf_counter()
    t_on = t0 + spec["warmup"]
    t_off = t_on + spec["duration"]
    pair = 0
    while time.perf_counter() < t_off:
        for k in (0, 1) if pair % 2 == 0 else (1, 0):
            start = time.perf_counter()
            try:
                res = await asyncio.wait_for(conns[k].request(raws[k]), spec["grace"])
            except (ConnectionError, ValueError, TimeoutError) as exc:
                logs[k].fail(repr(exc))
                res = None
            if res is not None:
                logs[k].record(start, res)
            if conns[k].closed or res is None or not res[4]:
                conns[k].transport.close()
                conns[k] = await _connect(ways[k][0])
                logs[k].new_conns += 1
        pair += 1
    for c in conns:
        c.transport.close()
    out = []
    for log in logs:
        window = [r for r in log.ok if t_on <= r[0] < t_off]
        out.append(
            {
                "window": [t_on, t_off],
                "requests": len(window),
                "rps": len(window) / spec["duration"],
                "latency_ms": _summary([r[2] - r[0] for r in window]),
                "first_byte_ms": _summary([r[1] - r[0] for r in window]),
                "errors": log.errors,
                "first_error": log.first_error,
                "reconnects": log.new_conns,
                "client_cpu": None,
                "paired": True,
            }
        )
    return {"paired": out}


def _run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (a fleetpilot dependency off Windows)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
    else:
        uvloop.run(main)


def _client_main(conn: Any, core: int) -> None:
    """The client process: one measurement per spec received, until None."""
    os.sched_setaffinity(0, {core})
    while (spec := conn.recv()) is not None:
        out: dict[str, Any] = {}

        async def go(spec: dict[str, Any] = spec, out: dict[str, Any] = out) -> None:
            measure = _measure_paired if spec["mode"] == "paired" else _measure
            out.update(await measure(spec))

        try:
            _run_async(go())
        except Exception as exc:  # the orchestrator reports it and stops
            out = {"failed": repr(exc)}
        conn.send(out)


# --------------------------------------------------------------------------- orchestration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned(core: int) -> Any:
    return lambda: os.sched_setaffinity(0, {core})


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _start(
    name: str, cmd: list[str], core: int, tmp: Path, env: dict[str, str] | None = None
) -> _Proc:
    log = tmp / f"{name}.log"
    with log.open("wb") as f:
        popen = subprocess.Popen(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pinned(core),
            start_new_session=True,  # its own process group: stop() reaches any children
            env={**os.environ, **(env or {})},
            cwd=tmp,
        )
    return _Proc(name, popen, log)


def _wait_ready(proc: _Proc, port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{path}"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout:.0f}s:\n{proc.tail()}")


def _prime(proxy: _Proxy) -> None:
    """One request of each kind first: some proxies do seconds of lazy set-up on the first."""
    for stream in (False, True):
        url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
        headers = proxy.headers | {"Content-Type": "application/json"}
        req = urllib.request.Request(url, data=_request_body(stream), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
        except OSError as exc:
            raise RuntimeError(f"{proxy.name} failed its first request: {exc}") from exc


class _Sampler(threading.Thread):
    """Every 50 ms: CPU seconds and RSS of each watched process tree, and the busy seconds of
    the cores in use, so that load from processes not ours can be told apart."""

    def __init__(self, cores: list[int]) -> None:
        super().__init__(daemon=True)
        self.cores = sorted(set(cores))
        self.watch: dict[str, int] = {"ours": os.getpid()}
        self.samples: dict[str, list[tuple[float, float, int]]] = {}
        self.peak_rss: dict[str, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            per = psutil.cpu_times(percpu=True)
            busy = sum(per[c].user + per[c].nice + per[c].system + per[c].irq for c in self.cores)
            busy += sum(per[c].softirq + per[c].steal for c in self.cores)
            self.samples.setdefault("busy", []).append((time.perf_counter(), busy, 0))
            for name, pid in list(self.watch.items()):
                got = _tree_usage(pid)
                if got is not None:
                    self.samples.setdefault(name, []).append((time.perf_counter(), *got))
                    self.peak_rss[name] = max(self.peak_rss.get(name, 0), got[1])

    def cpu_share(self, name: str, t_on: float, t_off: float) -> float | None:
        """Cores' worth of CPU that ``name`` used between the two instants."""
        xs = [s for s in self.samples.get(name, []) if t_on <= s[0] <= t_off]
        if len(xs) < 2 or xs[-1][0] <= xs[0][0]:
            return None
        return (xs[-1][1] - xs[0][1]) / (xs[-1][0] - xs[0][0])

    def foreign(self, t_on: float, t_off: float) -> float | None:
        """Cores' worth of CPU that processes not ours used on our cores."""
        busy, ours = self.cpu_share("busy", t_on, t_off), self.cpu_share("ours", t_on, t_off)
        return None if busy is None or ours is None else max(0.0, busy - ours)

    def wait_quiet(self, limit: float, patience: float) -> float | None:
        """Wait (at most ``patience`` s) for a second in which others use < ``limit`` cores."""
        deadline = time.perf_counter() + patience
        while True:
            time.sleep(1.0)
            now = time.perf_counter()
            load = self.foreign(now - 1.0, now)
            if load is None or load < limit or now >= deadline:
                return load


def _tree_usage(pid: int) -> tuple[float, int] | None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    cpu = rss = 0
    for p in procs:
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    return cpu, rss


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class _Proxy:
    """A proxy under test: how to start it, where it is ready, what clients must send."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str
    headers: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0


def _relay(up_port: int) -> _Proxy:
    port = _free_port()
    cmd = [sys.executable, str(HERE / "upstream_fixed.py"), "--port", str(port)]
    return _Proxy("relay", [*cmd, "--relay-to", str(up_port)], port, "/health", {})


def _fleetpilot(
    args: argparse.Namespace,
    up_port: int,
    tmp: Path,
    store: str | None = None,
    guard: bool = False,
) -> _Proxy:
    """fleetpilot's gateway; with ``store``, with its tenancy stages on: every request carries
    a tenant key, passes requests- and tokens-per-minute limits and takes a budget hold (one
    Redis round trip), and is settled into the ledger after its answer."""
    port = _free_port()
    name = "fleetpilot+guard" if guard else "fleetpilot" if store is None else "fleetpilot+stages"
    fleet = tmp / f"{name}.yaml"
    pool = {
        "name": "bench",
        "model": MODEL,
        "accelerator": "A100-80G",
        "capacity_class": "on_demand",
        "replicas": [f"http://127.0.0.1:{up_port}"],
    }
    data: dict[str, Any] = {"gateway": {"host": "127.0.0.1", "port": port}, "pools": [pool]}
    headers: dict[str, str] = {}
    if store is not None:
        tenant = {"name": "bench", "limits": {"rpm": 10**9, "tpm": 10**12},
                  "budgets": [{"usd": 1e9, "period": "month"}]}  # fmt: skip
        data |= {"store": {"url": store}, "tenancy": {"tenants": [tenant]}}
        headers = {"Authorization": f"Bearer {_tenant_key(store, tenant)}"}
    if guard:  # input checks, canary and output checks on every request
        data["guard"] = {"enabled": True}
    fleet.write_text(yaml.safe_dump(data))
    if args.gateway_cmd:
        cmd = shlex.split(args.gateway_cmd.format(fleet=fleet, port=port, python=sys.executable))
    else:
        cmd = [sys.executable, "-m", "fleetpilot", "gateway", "--fleet", str(fleet)]
        cmd += ["--port", str(port)] + (["--router", args.router] if args.router else [])
    return _Proxy(name, cmd, port, "/health", headers)


def _tenant_key(store: str, tenant: dict[str, Any]) -> str:
    """A key for ``tenant``, made in the store before the gateway starts."""
    from fleetpilot.store import open_store
    from fleetpilot.tenancy import registry
    from fleetpilot.tenancy.model import Tenant

    async def make() -> str:
        s = open_store(store)
        try:
            await registry.put_tenant(s, Tenant.model_validate(tenant))
            return (await registry.create_key(s, tenant["name"], time.time()))[1]
        finally:
            await s.close()

    return asyncio.run(make())


def _redis(core: int, tmp: Path) -> tuple[_Proc | None, str]:
    """A redis-server on loopback for the stages' store (no persistence: this measures the
    round trip, not the disk)."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None, "redis-server is not installed"
    port = _free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = _start("redis", cmd, core, tmp)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.stop()
    return None, "redis-server did not start"


def _litellm(up_port: int, tmp: Path) -> tuple[_Proxy | None, str]:
    py = os.environ.get("LITELLM_PYTHON")
    if not py:
        return None, "LITELLM_PYTHON is not set"
    probe = (
        "import importlib.util as u,sys;sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
    )
    try:
        missing = subprocess.run([py, "-c", probe, "litellm", "fastapi", "uvicorn"], timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"LITELLM_PYTHON={py} cannot run: {exc}"
    if missing.returncode != 0:
        return None, f"LITELLM_PYTHON={py} lacks litellm[proxy] (litellm, fastapi, uvicorn)"
    port = _free_port()
    cfg = tmp / "litellm.yaml"
    params = {"model": f"openai/{MODEL}", "api_base": f"http://127.0.0.1:{up_port}/v1"}
    entry = {"model_name": MODEL, "litellm_params": params | {"api_key": "x"}}
    cfg.write_text(yaml.safe_dump({"model_list": [entry]}))
    script = Path(py).parent / "litellm"
    cmd = [str(script)] if script.exists() else [py, "-m", "litellm.proxy.proxy_cli"]
    cmd += ["--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    key = "sk-bench-" + os.urandom(12).hex()
    # Offline, LiteLLM would spend 23 s of retries per streamed request looking for a llama-3
    # tokenizer on the Hugging Face hub before falling back to its bundled tiktoken.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": key, "HF_HUB_OFFLINE": "1"}
    headers = {"Authorization": f"Bearer {key}"}
    cmd += ["--num_workers", "1"]
    return _Proxy("litellm", cmd, port, "/health/liveliness", headers, env, 180.0), ""


@dataclass
class _Bench:
    args: argparse.Namespace
    client: Any
    sampler: _Sampler
    up_port: int
    console: Console

    def _run(self, label: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Once the cores are quiet (or ``--quiet-wait`` ran out), one measurement by the client."""
        if self.args.quiet_wait > 0:
            load = self.sampler.wait_quiet(0.1, self.args.quiet_wait)
            if load is not None and load >= 0.1:
                self.console.print(f"  [yellow]other processes use {load:.2f} cores; going on")
        self.client.send(spec)
        res: dict[str, Any] = self.client.recv()
        if "failed" in res:
            raise RuntimeError(f"{label}: the load generator failed: {res['failed']}")
        return res

    def point(self, label: str, port: int, headers: dict[str, str], **kw: Any) -> dict[str, Any]:
        a = self.args
        spec = {"port": port, "headers": headers, "warmup": a.warmup, "duration": a.duration}
        spec |= {"grace": 30.0, "prefill": 128} | kw
        res = self._run(label, spec)
        for name in self.sampler.watch:
            res[f"cpu_{name}"] = self.sampler.cpu_share(name, *res["window"])
        res["cpu_others"] = others = self.sampler.foreign(*res["window"])
        lat = res["latency_ms"]
        self.console.print(
            f"  {label:<34} p50 {lat['p50']:8.2f} ms  p99 {lat['p99']:8.2f} ms  "
            f"{res['rps']:8.0f} req/s  errors {res['errors']}  "
            f"other load {'?' if others is None else f'{others:.2f}'} cores"
        )
        return res

    def paired(
        self, label: str, ways: list[tuple[int, dict[str, str]]], stream: bool
    ) -> list[dict[str, Any]]:
        """Concurrency 1, direct and via interleaved in one window: [direct, via]."""
        a = self.args
        spec = {"mode": "paired", "ways": ways, "stream": stream, "grace": 30.0}
        spec |= {"warmup": a.warmup, "duration": a.paired_duration}
        res = self._run(label, spec)
        others = self.sampler.foreign(*res["paired"][0]["window"])
        for way, r in zip(("direct", "via"), res["paired"], strict=True):
            for name in self.sampler.watch:
                r[f"cpu_{name}"] = self.sampler.cpu_share(name, *r["window"])
            r["cpu_others"] = others
            lat = r["latency_ms"]
            self.console.print(
                f"  {label + ' ' + way + ' (paired)':<34} p50 {lat['p50']:8.2f} ms  "
                f"p99 {lat['p99']:8.2f} ms  {r['requests']:8d} req    errors {r['errors']}  "
                f"other load {'?' if others is None else f'{others:.2f}'} cores"
            )
        return list(res["paired"])

    def phase(
        self, proxy: _Proxy, tmp: Path, points: list[tuple[bool | str, int]]
    ) -> dict[str, Any]:
        """Start ``proxy`` on the proxy core; measure each (stream, concurrency) point and the
        open-loop rate, both directly and through it; stop it."""
        a = self.args
        proc = _start(proxy.name, proxy.cmd, a.cores[0], tmp, proxy.env)
        try:
            _wait_ready(proc, proxy.port, proxy.ready_path, proxy.start_timeout)
            _prime(proxy)
            self.sampler.watch[proxy.name] = proc.popen.pid
            out: dict[str, Any] = {"closed": [], "open": {}, "command": proxy.cmd}
            both: list[tuple[str, int, dict[str, str]]] = [
                ("direct", self.up_port, {}),
                ("via", proxy.port, proxy.headers),
            ]
            for stream, conc in points:
                row: dict[str, Any] = {"stream": stream, "concurrency": conc}
                if conc == 1 and a.paired_duration > 0:
                    label = f"{proxy.name} {_kind(stream)} c=1"
                    ways = [(port, hdrs) for _, port, hdrs in both]
                    row["direct"], row["via"] = self.paired(label, ways, stream)
                    out["closed"].append(row)
                    continue
                for way, port, hdrs in both:
                    label = f"{proxy.name} {way} {_kind(stream)} c={conc}"
                    row[way] = self.point(
                        label, port, hdrs, mode="closed", stream=stream, concurrency=conc
                    )
                out["closed"].append(row)
            out["open_high"] = {}
            for rate, key in ((a.rate, "open"), (a.rate_high, "open_high")):
                if rate <= 0:
                    continue
                for way, port, hdrs in both:
                    label = f"{proxy.name} {way} open {rate:g}/s"
                    out[key][way] = self.point(
                        label, port, hdrs, mode="open", stream=False, rate=rate
                    )
            out["peak_rss_bytes"] = max(
                self.sampler.peak_rss.get(proxy.name, 0), _vm_hwm(proc.popen.pid)
            )
            return out
        finally:
            self.sampler.watch.pop(proxy.name, None)
            proc.stop()


# --------------------------------------------------------------------------- reporting


def _num(x: float) -> str:
    return "—" if x != x else f"{x:,.2f}"


def _ms(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.2f}"


def _closed_table(name: str, res: dict[str, Any]) -> Table:
    t = Table(title=f"{name}: closed loop, upstream 50 ms (latency ms, throughput req/s)")
    for col in ("mode", "conc", "p50 direct", "p50 via", "+p50", "p99 direct", "p99 via"):
        t.add_column(col, justify="right")
    for col in ("+p99", "req/s direct", "req/s via", "via/direct", "proxy CPU", "errors"):
        t.add_column(col, justify="right")
    t.add_column("others", justify="right")
    for row in res["closed"]:
        d, v = row["direct"], row["via"]
        dl, vl = d["latency_ms"], v["latency_ms"]
        cpu = v.get(f"cpu_{name}")
        t.add_row(
            _kind(row["stream"]),
            str(row["concurrency"]),
            _ms(dl["p50"]),
            _ms(vl["p50"]),
            _ms(vl["p50"] - dl["p50"]),
            _ms(dl["p99"]),
            _ms(vl["p99"]),
            _ms(vl["p99"] - dl["p99"]),
            f"{d['rps']:.0f}",
            f"{v['rps']:.0f}",
            f"{v['rps'] / d['rps']:.2f}" if d["rps"] else "—",
            "—" if cpu is None else f"{cpu:.0%}",
            f"{d['errors']}/{v['errors']}",
            _others(d, v),
        )
    return t


def _kind(stream: bool | str) -> str:
    return "mixed" if stream == "mixed" else "stream" if stream else "json"


def _stages_table(off: dict[str, Any], on: dict[str, Any]) -> Table:
    """The pipeline's tenancy stages (auth, limits, budget on Redis) against the same gateway
    with them off, each beside its own direct baseline of the same run."""
    t = Table(title="fleetpilot with auth + limits + budget on (Redis on loopback) vs off")
    for col in ("point", "off", "on", "on − off / on ÷ off", "goal", ""):
        t.add_column(col, justify="right")
    a, b = _added(_c1(off), "p50"), _added(_c1(on), "p50")
    ok = b - a <= STAGES["added_p50_c1_ms"]
    c1 = [_c1(res)[w] for res in (off, on) for w in ("direct", "via")]
    t.add_row("added p50, json c=1, ms", _ms(a), _ms(b), _ms(b - a), "≤ 0.5",
              _verdict(ok, *c1))  # fmt: skip
    top = max(r["concurrency"] for r in on["closed"] if r["stream"] is False)
    pick = [next(r for r in res["closed"] if r["stream"] is False and r["concurrency"] == top)
            for res in (off, on)]  # fmt: skip
    share = pick[1]["via"]["rps"] / pick[0]["via"]["rps"] if pick[0]["via"]["rps"] else 0.0
    busy = [r[w] for r in pick for w in ("direct", "via")]
    t.add_row(f"req/s via, json c={top}", f"{pick[0]['via']['rps']:.0f}",
              f"{pick[1]['via']['rps']:.0f}", f"{share:.2f}", "≥ 0.70",
              _verdict(share >= STAGES["rps_share"], *busy))  # fmt: skip
    for key in ("open", "open_high"):
        if off.get(key) and on.get(key):
            x, y = _added(off[key], "p99"), _added(on[key], "p99")
            t.add_row(f"added p99, {key.replace('_', ' ')}, ms", _ms(x), _ms(y), _ms(y - x), "", "")
    t.add_row("others (cores)", _others(*_points(off)), _others(*_points(on)), "", "", "")
    return t


def _guard_table(off: dict[str, Any], on: dict[str, Any]) -> Table:
    """The guard stage (input checks, canary, output checks) against the same gateway with
    it off, at concurrency 1, each beside its own direct baseline of the same run."""
    t = Table(title="fleetpilot with the guard stage on vs off (lowest concurrency)")
    for col in ("point", "off", "on", "on − off", "goal", ""):
        t.add_column(col, justify="right")
    for stream in (False, True):
        if not any(r["stream"] is stream for r in on["closed"]):
            continue
        a_row, b_row = _c1(off, stream), _c1(on, stream)
        a, b = _added(a_row, "p50"), _added(b_row, "p50")
        label = "stream" if stream else "json"
        goal = "" if stream else f"≤ {GUARD_ADDED_P50_MS}"
        verdict = (
            ""
            if stream
            else _verdict(
                b - a <= GUARD_ADDED_P50_MS,
                a_row["direct"],
                a_row["via"],
                b_row["direct"],
                b_row["via"],
            )
        )
        c = a_row["concurrency"]
        t.add_row(f"added p50, {label} c={c}, ms", _ms(a), _ms(b), _ms(b - a), goal, verdict)
    return t


BUSY_CORES = 0.25  # other processes' load above which a figure is not judged


def _verdict(ok: bool, *points: dict[str, Any]) -> str:
    """PASS / MISS, or *busy* when other processes used over a quarter of a core while the
    figure was measured: such a figure is not a verdict either way."""
    loads = [p["cpu_others"] for p in points if p.get("cpu_others") is not None]
    if loads and max(loads) > BUSY_CORES:
        return f"[yellow]busy ({max(loads):.2f} cores): not judged"
    return "[green]PASS" if ok else "[red]MISS"


def _points(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for r in res["closed"] for p in (r["direct"], r["via"])]


def _others(*points: dict[str, Any]) -> str:
    """The most CPU (in cores) that processes not ours used during these measurements."""
    xs = [p["cpu_others"] for p in points if p.get("cpu_others") is not None]
    return f"{max(xs):.2f}" if xs else "?"


def _open_table(name: str, res: dict[str, Any], rate: float) -> Table:
    t = Table(title=f"{name}: open loop at {rate:g} req/s, non-streamed (latency ms)")
    for col in ("", "p50", "p90", "p99", "max", "req/s", "proxy CPU", "errors", "others"):
        t.add_column(col, justify="right")
    d, v = res["open"]["direct"], res["open"]["via"]
    for label, r in (("direct", d), ("via", v)):
        lat = r["latency_ms"]
        cpu = r.get(f"cpu_{name}") if label == "via" else None
        t.add_row(
            label,
            *(_ms(lat[k]) for k in ("p50", "p90", "p99", "max")),
            f"{r['rps']:.0f}",
            "—" if cpu is None else f"{cpu:.0%}",
            str(r["errors"]),
            _others(r),
        )
    dl, vl = d["latency_ms"], v["latency_ms"]
    added = (_ms(vl[k] - dl[k]) for k in ("p50", "p90", "p99", "max"))
    t.add_row("added", *added, "", "", "", "")
    return t


def _added(point: dict[str, Any], q: str) -> float:
    return float(point["via"]["latency_ms"][q] - point["direct"]["latency_ms"][q])


def _c1(res: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    rows = [r for r in res["closed"] if r["stream"] == stream]
    return min(rows, key=lambda r: r["concurrency"])


def _floor_table(floor: dict[str, Any], proxies: list[str], results: dict[str, Any]) -> Table:
    t = Table(title="hop floor: ms added by a byte relay vs by each proxy, same core")
    t.add_column("point")
    for col in ("relay", *proxies, *(f"{p} − relay" for p in proxies)):
        t.add_column(col, justify="right")
    for label, pick, q in (
        (f"json c={_c1(floor)['concurrency']}, +p50", _c1, "p50"),
        (f"stream c={_c1(floor, True)['concurrency']}, +p50", lambda r: _c1(r, True), "p50"),
        ("open loop, +p50", lambda r: r["open"], "p50"),
        ("open loop, +p99", lambda r: r["open"], "p99"),
    ):
        base = _added(pick(floor), q)
        ours = [_added(pick(results[p]), q) for p in proxies]
        t.add_row(label, _ms(base), *map(_ms, ours), *(_ms(x - base) for x in ours))
    return t


def _verdicts(
    res: dict[str, Any], floor: dict[str, Any]
) -> list[tuple[str, float, float | None, str, bool, list[dict[str, Any]]]]:
    """(target, measured, measured less the relay's share, goal, met, the measurements it
    rests on) for each target."""
    t = TARGETS
    c1row = _c1(res)
    c1 = _added(c1row, "p50")
    best = max((r for r in res["closed"] if not r["stream"]), key=lambda r: r["via"]["rps"])
    rps = best["via"]["rps"]
    p99 = _added(res["open"], "p99")
    rss = res["peak_rss_bytes"] / 1e6
    conc = c1row["concurrency"]

    def pts(row: dict[str, Any]) -> list[dict[str, Any]]:
        return [row["direct"], row["via"]]

    out = [
        (f"added p50, json c={conc}, ms", c1, c1 - _added(_c1(floor), "p50"), "≤ 1",
         c1 <= t["added_p50_c1_ms"], pts(c1row)),
        (f"max json req/s, one core (c={best['concurrency']})", rps, None, "≥ 2,000",
         rps >= t["max_rps"] and best["via"]["errors"] == 0, pts(best)),
        ("added p99, open loop, ms", p99, p99 - _added(floor["open"], "p99"), "≤ 5",
         p99 <= t["added_p99_rate_ms"], pts(res["open"])),
        ("peak RSS, MB", rss, None, "≤ 150", rss <= t["rss_mb"], []),
    ]  # fmt: skip
    if res.get("open_high"):
        high = _added(res["open_high"], "p99")
        net = high - _added(floor["open_high"], "p99") if floor.get("open_high") else None
        out.append(("added p99, open loop at --rate-high, ms", high, net, "≤ 1",
                    high <= HIGH_RATE_P99_MS, pts(res["open_high"])))  # fmt: skip
    return out


def _target_table(name: str, res: dict[str, Any], floor: dict[str, Any]) -> Table:
    t = Table(title=f"{name}: targets")
    t.add_column("target")
    for col in ("measured", "less hop floor", "goal", ""):
        t.add_column(col, justify="right")
    for label, value, net, goal, ok, points in _verdicts(res, floor):
        net_s = "" if net is None else f"{net:,.2f}"
        t.add_row(label, f"{value:,.2f}", net_s, goal, _verdict(ok, *points))
    return t


def _ratio_table(fp: dict[str, Any], ll: dict[str, Any]) -> Table:
    t = Table(title="fleetpilot vs LiteLLM proxy, same upstream, same core")
    for col in ("metric", "fleetpilot", "LiteLLM", "fleetpilot / LiteLLM"):
        t.add_column(col, justify="right")
    for label, a, b in _comparable(fp, ll):
        ratio = f"{a / b:.3g}" if b and a == a and b == b else "—"  # x == x: not NaN
        t.add_row(label, _num(a), _num(b), ratio)
    return t


def _comparable(fp: dict[str, Any], ll: dict[str, Any]) -> list[tuple[str, float, float]]:
    rows = []
    for r1, r2 in zip(fp["closed"], ll["closed"], strict=True):
        tag = f"{_kind(r1['stream'])} c={r1['concurrency']}"
        add = [r["via"]["latency_ms"]["p50"] - r["direct"]["latency_ms"]["p50"] for r in (r1, r2)]
        rows.append((f"added p50 ms, {tag}", add[0], add[1]))
        rows.append((f"req/s via, {tag}", r1["via"]["rps"], r2["via"]["rps"]))
    rows.append(("peak RSS MB", fp["peak_rss_bytes"] / 1e6, ll["peak_rss_bytes"] / 1e6))
    return rows


def _walk(tree: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in nested dicts and lists."""
    if isinstance(tree, dict):
        here = [tree[key]] if key in tree else []
        return here + [x for v in tree.values() for x in _walk(v, key)]
    if isinstance(tree, list):
        return [x for v in tree for x in _walk(v, key)]
    return []


# --------------------------------------------------------------------------- main


def _cores() -> list[int]:
    """[gateway core, upstream core, client core]: distinct where the machine allows."""
    have = sorted(os.sched_getaffinity(0))
    up = have[1] if len(have) > 1 else have[0]
    return [have[0], up, have[2] if len(have) > 2 else up]


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per point")
    ap.add_argument(
        "--paired-duration",
        type=float,
        default=20.0,
        help="measured seconds of the concurrency-1 points, direct and via interleaved "
        "(0: measure them one after the other like the rest)",
    )
    ap.add_argument("--quick", action="store_true", help="1.5 s points after 0.5 s warm-ups")
    ap.add_argument("--concurrency", default="1,16,64,256", help="closed-loop workers")
    ap.add_argument("--saturation", type=int, default=512, help="extra json point for max req/s")
    ap.add_argument("--rate", type=float, default=1000.0, help="open-loop arrivals per second")
    ap.add_argument(
        "--rate-high", type=float, default=2500.0, help="a second open-loop rate (0: none)"
    )
    ap.add_argument(
        "--mixed",
        type=int,
        default=64,
        help="workers mixing streamed and json requests on each connection (0: none)",
    )
    ap.add_argument("--no-stages", action="store_true", help="skip the tenancy stages' phase")
    ap.add_argument("--no-guard", action="store_true", help="skip the guard stage's phase")
    ap.add_argument(
        "--skip-relay",
        action="store_true",
        help="no byte-relay phase (and so no hop floor or target verdicts): for a quick "
        "stages-on-vs-off comparison",
    )
    ap.add_argument("--delay", type=float, default=0.05, help="upstream latency, seconds")
    ap.add_argument("--router", default=None, help="fleetpilot routing policy")
    ap.add_argument(
        "--gateway-cmd",
        default=None,
        help="run this instead of fleetpilot's gateway; {python} {fleet} {port} are filled in",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each point, wait up to this many s for other processes to quiet down",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.paired_duration = 1.5, 0.5, 3.0
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.cores = _cores()
    return args


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop children


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console(width=None if sys.stdout.isatty() else 150)
    gw_core, up_core, client_core = args.cores
    console.print(
        f"cores: proxy {gw_core}, upstream {up_core}, client {client_core} "
        f"(of {len(os.sched_getaffinity(0))} usable); "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per point; "
        f"upstream answers in {args.delay * 1000:g} ms"
    )
    if gw_core == up_core:
        console.print("[yellow]one core only: proxy, upstream and client share it")
    os.sched_setaffinity(0, {client_core})  # this process and its sampler stay off the gateway
    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    procs: list[_Proc] = []
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    client = ctx.Process(target=_client_main, args=(child, client_core), daemon=True)
    sampler = _Sampler(args.cores)
    with tempfile.TemporaryDirectory(prefix="fleetpilot-bench-") as d:
        tmp = Path(d)
        try:
            up_port = _free_port()
            up_cmd = [sys.executable, str(HERE / "upstream_fixed.py"), "--port", str(up_port)]
            up = _start("upstream", [*up_cmd, "--delay", str(args.delay)], up_core, tmp)
            procs.append(up)
            _wait_ready(up, up_port, "/health", 30)
            client.start()
            sampler.watch["upstream"] = up.popen.pid
            sampler.start()
            bench = _Bench(args, parent, sampler, up_port, console)
            c1 = min(args.concurrency)
            if not args.skip_relay:
                results["relay"] = bench.phase(_relay(up_port), tmp, [(False, c1), (True, c1)])
            points: list[tuple[bool | str, int]] = [
                (s, c) for s in (False, True) for c in args.concurrency
            ]
            points.append((False, args.saturation))
            if args.mixed:
                points.append(("mixed", args.mixed))
            proxies = [_fleetpilot(args, up_port, tmp)]
            ll, why = _litellm(up_port, tmp)
            if ll is not None:
                proxies.append(ll)
            for proxy in proxies:
                results[proxy.name] = bench.phase(proxy, tmp, points)
            stages_why = "--no-stages" if args.no_stages else ""
            if not args.no_stages and not args.gateway_cmd:
                redis_proc, store = _redis(up_core, tmp)
                if redis_proc is None:
                    stages_why = store
                else:
                    procs.append(redis_proc)
                    sampler.watch["redis"] = redis_proc.popen.pid
                    on = _fleetpilot(args, up_port, tmp, store)
                    top = max(args.concurrency)
                    results[on.name] = bench.phase(on, tmp, [(False, c1), (False, top)])
            if not args.no_guard and not args.gateway_cmd:
                g = _fleetpilot(args, up_port, tmp, guard=True)
                results[g.name] = bench.phase(g, tmp, [(False, c1), (True, c1)])
        except RuntimeError as exc:
            console.print(f"[red]{exc}")
            return 2
        finally:
            sampler.halt.set()
            if client.is_alive():
                parent.send(None)
                client.join(5)
                if client.is_alive():
                    client.kill()
            for p in procs:
                p.stop()
    for proxy in proxies:
        res = results[proxy.name]
        console.print(_closed_table(proxy.name, res))
        console.print(_open_table(proxy.name, res, args.rate))
        if res.get("open_high"):
            console.print(_open_table(proxy.name, res | {"open": res["open_high"]}, args.rate_high))
    floor = results.get("relay")
    if floor is not None:
        console.print(_floor_table(floor, [p.name for p in proxies], results))
        for proxy in proxies:
            res = results[proxy.name]
            console.print(_target_table(proxy.name, res, floor))
            res["targets"] = [
                {"target": lbl, "measured": v, "less_hop_floor": net, "goal": g, "pass": ok}
                for lbl, v, net, g, ok, _ in _verdicts(res, floor)
            ]
    if "fleetpilot+stages" in results:
        console.print(_closed_table("fleetpilot+stages", results["fleetpilot+stages"]))
    if "fleetpilot+stages" in results:
        console.print(_stages_table(results["fleetpilot"], results["fleetpilot+stages"]))
    else:
        console.print(f"Stages on/off comparison skipped: {stages_why}.")
    if "fleetpilot+guard" in results:
        console.print(_guard_table(results["fleetpilot"], results["fleetpilot+guard"]))
    if ll is not None:
        console.print(_ratio_table(results["fleetpilot"], results["litellm"]))
        results["ratios"] = _comparable(results["fleetpilot"], results["litellm"])
    else:
        console.print(f"LiteLLM comparison skipped: {why}.")
        results["litellm_skipped"] = why
    others = [x for x in _walk(results, "cpu_others") if x is not None]
    if others and max(others) >= 0.1:
        console.print(
            f"[yellow]other processes used up to {max(others):.2f} cores during some points "
            "(see 'other load' above): those numbers are suspect."
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
