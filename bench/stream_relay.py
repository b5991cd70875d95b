"""Paced streams through the gateway: CPU per relayed event and added inter-token latency,
for the fast lane's stream writer against aiohttp's (``gateway.fast_lane_streams``), in one run.

Streams are sent as replicas send them: ``--tokens`` SSE events, one every ``--pace``
seconds (``upstream_fixed.py --pace``), each event its own write.  ``--streams`` clients keep
one stream each in flight, back to back, on keep-alive connections, for ``--duration``
seconds after a warm-up.  Measured, per path:

- **CPU µs per relayed event**: the gateway process's user+system CPU over the window,
  divided by the events the clients received in it (psutil);
- **inter-token gaps**, client side, p50 and p99, beside the same streams taken directly from
  the upstream in the same run: the gap added is the gateway's;
- the machine's other load while it measured (CPU of every process that is not the upstream,
  the gateway or the client): above a quarter of a core the figure is marked as taken on a
  busy machine, not a verdict.

    .venv/bin/python bench/stream_relay.py [--streams 200] [--pace 0.02] [--tokens 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
MODEL = "llama-3.1-8b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class _Stream(asyncio.Protocol):
    """One keep-alive connection sending one streamed request after another; it counts the
    events it receives and the gaps between them, parsing nothing else."""

    def __init__(self, request: bytes, stats: dict[str, Any]) -> None:
        self.request = request
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.last = 0.0
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.last = 0.0
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 200"):
            self.stats["errors"] += 1  # a stream refused (shed): the run is not valid
            assert self.transport is not None
            self.transport.close()
            return
        data = self.tail + data
        events = data.count(b"data: ")
        if events:
            st = self.stats
            if st["measuring"]:
                st["events"] += events
                if self.last:
                    st["gaps"].append(now - self.last)
            self.last = now
        done = data.find(b"0\r\n\r\n", max(0, len(data) - 64)) >= 0 and b"[DONE]" in data[-200:]
        self.tail = data[-16:]
        if done:
            self.tail = b""
            if self.stats["running"]:
                self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _request(port: int, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": tokens + 8,
            "stream": True,
        }
    ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _drive(
    port: int, streams: int, tokens: int, warmup: float, duration: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {
        "events": 0, "gaps": [], "errors": 0, "measuring": False, "running": True,
    }  # fmt: skip
    raw = _request(port, tokens)
    conns = []
    for _ in range(streams):
        _, proto = await loop.create_connection(lambda: _Stream(raw, stats), "127.0.0.1", port)
        conns.append(proto)
    await asyncio.sleep(warmup)
    stats["measuring"] = True
    stats["t0"] = time.perf_counter()
    await asyncio.sleep(duration)
    stats["measuring"] = False
    stats["t1"] = time.perf_counter()
    stats["running"] = False
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.2)
    return stats


def _client(
    port: int, streams: int, tokens: int, warmup: float, duration: float, out: Path
) -> None:
    """Runs in its own process, so the client's CPU is not the gateway's."""
    stats = asyncio.run(_drive(port, streams, tokens, warmup, duration))
    gaps = sorted(stats["gaps"])
    out.write_text(
        json.dumps(
            {
                "events": stats["events"],
                "seconds": stats["t1"] - stats["t0"],
                "p50": gaps[len(gaps) // 2] if gaps else None,
                "p99": gaps[int(len(gaps) * 0.99)] if gaps else None,
                "errors": stats["errors"],
            }
        )
    )


def _measure(
    port: int, streams: int, tokens: int, warmup: float, duration: float, watch: list[int]
) -> dict[str, Any]:
    """Drive ``port`` from a client process; the CPU of the processes in ``watch`` and of
    everything else on the machine over the measured window."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    client = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--client",
            str(port),
            str(streams),
            str(tokens),
            str(warmup),
            str(duration),
            str(out),
        ]
    )
    time.sleep(warmup)
    procs = {pid: psutil.Process(pid) for pid in [*watch, client.pid]}
    before = {pid: p.cpu_times() for pid, p in procs.items()}
    total0 = psutil.cpu_times()
    time.sleep(duration)
    after = {pid: p.cpu_times() for pid, p in procs.items()}
    total1 = psutil.cpu_times()
    client.wait(60)
    result = json.loads(out.read_text())
    out.unlink()

    def busy(t: Any) -> float:
        return float(t.user + t.system)

    used = {pid: busy(after[pid]) - busy(before[pid]) for pid in procs}
    machine = (total1.user + total1.system + total1.nice) - (
        total0.user + total0.system + total0.nice
    )
    result["cpu"] = used
    result["other_cores"] = max(0.0, machine - sum(used.values())) / duration
    return result


def _gateway(
    upstream_port: int, fast_streams: bool, tmp: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    fleet = {
        "gateway": {
            "port": port,
            "ttft_slo_s": 600.0,
            "shed_factor": 1e6,  # the perf model's A10G would shed; relaying is measured
            "fast_lane_streams": fast_streams,
            "admin_token": "bench",
            "health_interval_s": 5.0,
            "max_connections_per_replica": 4096,  # every stream in flight at once, none queued
        },
        "pools": [
            {
                "name": "p",
                "model": MODEL,
                "accelerator": "A10G",
                "replicas": [f"http://127.0.0.1:{upstream_port}"],
                "context_tokens": 8192,
            }
        ],
    }
    path = tmp / f"fleet-{int(fast_streams)}.yaml"
    path.write_text(yaml.safe_dump(fleet))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetpilot", "gateway", "--fleet", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait(f"http://127.0.0.1:{port}/health", proc)
    return proc, port


FLOOR = "byte relay (floor)"


def _row(proc: subprocess.Popen[bytes], port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Measure the relay ``proc`` listening on ``port``, then stop it."""
    try:
        r = _measure(port, args.streams, args.tokens, args.warmup, args.duration, [proc.pid])
        r["gateway_cpu_s"] = r["cpu"][proc.pid]
        return r
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=200, help="concurrent streams")
    ap.add_argument("--pace", type=float, default=0.02, help="seconds between a stream's tokens")
    ap.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per path")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    console = Console()
    up_port = _free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "upstream_fixed.py"),
            "--port",
            str(up_port),
            "--delay",
            "0.01",
            "--pace",
            str(args.pace),
            "--tokens",
            str(args.tokens),
        ],
        stdout=subprocess.DEVNULL,
    )
    rows: dict[str, dict[str, Any]] = {}
    try:
        _wait(f"http://127.0.0.1:{up_port}/health", upstream)
        console.print(
            f"{args.streams} streams of {args.tokens} tokens, one every {args.pace * 1000:g} ms"
        )
        rows["direct"] = _measure(
            up_port, args.streams, args.tokens, args.warmup, args.duration, [upstream.pid]
        )
        relay_port = _free_port()
        relay = subprocess.Popen(
            [sys.executable, str(HERE / "upstream_fixed.py"), "--port", str(relay_port),
             "--relay-to", str(up_port), "--uvloop"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_port(relay_port, relay)
        except RuntimeError:
            relay.kill()
            raise
        rows[FLOOR] = _row(relay, relay_port, args)
        with tempfile.TemporaryDirectory() as tmp:
            for label, fast in (("aiohttp (old path)", False), ("fast lane", True)):
                gw, port = _gateway(up_port, fast, Path(tmp))
                rows[label] = _row(gw, port, args)
    finally:
        upstream.terminate()
        upstream.wait(10)

    direct = rows["direct"]
    table = Table(title="paced streams: the gateway's CPU per relayed event and the gap it adds")
    for col in ("path", "events/s", "CPU µs/event", "gap p50 ms", "gap p99 ms", "added p99 ms",
                "other load (cores)"):  # fmt: skip
        table.add_column(col, justify="right" if col != "path" else "left")
    for label, r in rows.items():
        rate = r["events"] / r["seconds"]
        per_event = r.get("gateway_cpu_s", 0.0) / max(r["events"], 1) * 1e6
        added = (r["p99"] - direct["p99"]) * 1000 if label != "direct" else 0.0
        busy = r["other_cores"] > 0.25
        table.add_row(
            label,
            f"{rate:,.0f}",
            "—" if label == "direct" else f"{per_event:.1f}",
            f"{r['p50'] * 1000:.2f}",
            f"{r['p99'] * 1000:.2f}",
            "—" if label == "direct" else f"{added:+.2f}",
            f"{r['other_cores']:.2f}" + (" busy: not a verdict" if busy else ""),
        )
    console.print(table)
    refused = {k: r["errors"] for k, r in rows.items() if r["errors"]}
    if refused:
        console.print(f"[red]streams refused: {refused}: these figures are not valid[/red]")
    old, new = rows["aiohttp (old path)"], rows["fast lane"]
    ratio = (new["gateway_cpu_s"] / max(new["events"], 1)) / (
        old["gateway_cpu_s"] / max(old["events"], 1)
    )
    console.print(f"fast lane CPU per event / aiohttp's: {ratio:.2f} (target ≤ 0.50)")
    floor = rows[FLOOR]["gateway_cpu_s"] / max(rows[FLOOR]["events"], 1)
    console.print(
        f"byte relay's CPU per event / aiohttp's: "
        f"{floor / (old['gateway_cpu_s'] / max(old['events'], 1)):.2f}: no relay that reads "
        "and writes each event on its own socket goes below it"
    )
    if args.json is not None:
        for r in rows.values():
            r.pop("cpu", None)
        args.json.write_text(json.dumps({"rows": rows, "cpu_ratio": ratio}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, streams, tokens, warmup, duration, out = sys.argv[2:8]
        _client(int(port), int(streams), int(tokens), float(warmup), float(duration), Path(out))
    else:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        main()
