"""The demo end to end, and the parts it is built from (process supervision, load generator).

Everything runs real processes on 127.0.0.1: emulators and gateways started by
:mod:`fleetpilot.procs`, requests sent by :mod:`fleetpilot.loadgen` through the openai client.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from fleetpilot.core.model import ServiceClass
from fleetpilot.core.workload import TraceRequest
from fleetpilot.demo import run_demo
from fleetpilot.loadgen import prompt_words, replay
from fleetpilot.procs import ChildFailed, Supervisor, fleetpilot_command, free_port
from fleetpilot.tokens import estimate_tokens


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _demo_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("fleetpilot-demo-*")}


@pytest.mark.timeout(90)
def test_demo_short_run_loses_nothing_and_cleans_up() -> None:
    before_children, before_dirs = {p.pid for p in _children()}, _demo_dirs()
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False, color_system=None)

    code = run_demo(duration=12, policies=["cost_slo", "round_robin"], seed=7, console=console)

    out = buf.getvalue()
    assert code == 0, out
    header = next(line for line in out.splitlines() if "policy" in line and "lost" in line)
    names = [c.strip() for c in header.strip("┃ ").split("┃")]
    lost_col, requests_col = names.index("lost"), names.index("requests")
    for policy in ("cost_slo", "round_robin"):
        row = next(line for line in out.splitlines() if line.startswith(f"│ {policy} "))
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[lost_col] == "0", row
        assert int(cells[requests_col]) > 50, row
    assert {p.pid for p in _children()} <= before_children, "child processes left behind"
    assert _demo_dirs() <= before_dirs, "temporary fleet file left behind"


def test_unknown_policy_is_refused_before_anything_starts() -> None:
    buf = io.StringIO()
    code = run_demo(5, ["nope"], seed=1, console=Console(file=buf, width=200))
    assert code == 2
    assert "nope" in buf.getvalue()


def test_prompt_words_count_exactly_and_differ() -> None:
    for n in (1, 16, 255, 4096):
        assert estimate_tokens(prompt_words(3, n)) == n
    assert prompt_words(1, 64) != prompt_words(2, 64)


async def test_supervisor_reports_a_crash_with_its_output() -> None:
    async with Supervisor() as sup:
        child = await sup.start(
            "crasher", [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(3)"]
        )
        with pytest.raises(ChildFailed, match="no GPU here") as err:
            await sup.wait_healthy(child, f"http://127.0.0.1:{free_port()}", timeout_s=10)
    assert "code 3" in str(err.value)


async def test_supervisor_kills_what_ignores_sigterm_even_on_error() -> None:
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        async with Supervisor(grace_s=0.5) as sup:
            for _ in range(2):
                pids.append((await sup.start("stubborn", [sys.executable, "-c", ignore])).pid)
            raise RuntimeError("boom")
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


async def test_replay_against_an_emulator() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    trace = [
        TraceRequest(0.0, 100, 20),
        TraceRequest(0.1, 2000, 5),
        TraceRequest(0.2, 30, 50, ServiceClass.BATCH),
        TraceRequest(0.2, 30, 1),
    ]
    seen: list[int] = []
    async with Supervisor() as sup:
        args = fleetpilot_command(
            "emulate", "--accelerator", "A100-80G", "--port", str(port), "--time-scale", "0.2"
        )
        await sup.start_healthy("emulator", args, url)
        result = await replay(
            url,
            "llama-3.1-8b",
            trace,
            time_scale=0.2,
            ttft_slo_s=2.0,
            max_connections=2,
            on_done=lambda o: seen.append(o.index),
        )
    assert sorted(seen) == [0, 1, 2, 3]
    assert [o.status for o in result.outcomes] == ["ok"] * 4
    assert [o.tokens for o in result.outcomes] == [20, 5, 50, 1]
    assert [o.usage_tokens for o in result.outcomes] == [20, 5, 50, 1]
    s = result.summary()
    assert (s.requests, s.ok, s.lost, s.shed) == (4, 4, 0, 0)
    # the emulator models an A100: 20 tokens take ~0.2 s and a first token well under 1 s
    assert 0 < s.ttft_p50 < 1.0 and s.e2e_p99 > s.ttft_p99
    assert s.slo_attainment == 1.0


async def test_replay_records_a_dead_endpoint_as_lost() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    trace = [TraceRequest(0.0, 10, 5), TraceRequest(0.05, 10, 5)]
    result = await replay(url, "llama-3.1-8b", trace, time_scale=1.0, ttft_slo_s=1.0)
    assert [o.status for o in result.outcomes] == ["connection", "connection"]
    s = result.summary()
    assert s.lost == 2 and s.ok == 0 and s.slo_attainment == 0.0
    assert s.errors == {"connection": 2}


async def test_replay_through_the_gateway_reads_headers_and_counts_sheds(tmp_path: Path) -> None:
    emulator = f"http://127.0.0.1:{free_port()}"
    gateway_port = free_port()
    gateway = f"http://127.0.0.1:{gateway_port}"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "gateway: {time_scale: 0.2}\n"
        "pools:\n"
        "  - {name: l4, model: llama-3.1-8b, accelerator: L4, capacity_class: on_demand,\n"
        f"     replicas: ['{emulator}']}}\n"
    )
    async with Supervisor() as sup:
        port = emulator.rsplit(":", 1)[1]
        emu = fleetpilot_command(
            "emulate", "--accelerator", "L4", "--port", port, "--time-scale", "0.2"
        )
        await sup.start_healthy("emulator", emu, emulator)
        gw = fleetpilot_command("gateway", "--fleet", str(fleet), "--port", str(gateway_port))
        await sup.start_healthy("gateway", gw, gateway)
        served = await replay(
            gateway, "llama-3.1-8b", [TraceRequest(0.0, 50, 10)], time_scale=0.2, ttft_slo_s=5
        )
        # a 2,000-token prompt needs ~0.5 s of L4 prefill: far over 3x a 10 ms TTFT target
        shed = await replay(
            gateway, "llama-3.1-8b", [TraceRequest(0.0, 2000, 10)], time_scale=0.2, ttft_slo_s=0.01
        )
    ok = served.outcomes[0]
    assert (ok.status, ok.tokens, ok.attempts) == ("ok", 10, 1)
    assert ok.replica is not None
    assert shed.outcomes[0].status == "shed" and not shed.outcomes[0].lost
    s = shed.summary()
    assert (s.shed, s.lost, s.slo_attainment) == (1, 0, 0.0)
