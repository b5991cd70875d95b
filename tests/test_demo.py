"""The demo end to end, and the parts it is built from (process supervision, load generator).

Everything runs real processes on 127.0.0.1: emulators and gateways started by
:mod:`fleetpilot.procs`, requests sent by :mod:`fleetpilot.loadgen` through the openai client.
Part 2 (the controller over a day) runs a short day in this test's event loop: the gateway
in-process, the replicas as processes started by the local actuator.
"""

from __future__ import annotations

import io
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from fleetpilot.core.model import ServiceClass
from fleetpilot.core.workload import TraceRequest
from fleetpilot.demo import run_demo
from fleetpilot.demo_controller import DaySettings, print_day, run_day
from fleetpilot.loadgen import prompt_words, replay
from fleetpilot.procs import ChildFailed, Supervisor, fleetpilot_command, free_port
from fleetpilot.tokens import estimate_tokens


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _table_row(out: str, column: str, first_cell: str) -> dict[str, str]:
    """The cells of the row starting with ``first_cell`` in the table that has ``column``."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("┃") and column in line)
    names = [c.strip() for c in lines[at].strip("┃ ").split("┃")]
    row = next(line for line in lines[at:] if line.strip("│ ").startswith(first_cell + " "))
    return dict(zip(names, (c.strip() for c in row.strip("│ ").split("│")), strict=True))


def _demo_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("fleetpilot-demo-*")}


@pytest.mark.timeout(90)
def test_demo_short_run_loses_nothing_and_cleans_up() -> None:
    before_children, before_dirs = {p.pid for p in _children()}, _demo_dirs()
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False, color_system=None)

    code = run_demo(
        duration=12, policies=["cost_slo", "round_robin"], seed=7, console=console,
        parts=["routing"],
    )  # fmt: skip

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
    code = run_demo(5, ["cost_slo"], seed=1, console=Console(file=buf), parts=["routing", "x"])
    assert code == 2


# A day of 48 modelled seconds in 24 real ones: control steps every 2 real seconds, replicas
# ready 1 real second after their process answers, a spot pre-emption in each spot pool.
SHORT_DAY = DaySettings(
    day_s=24.0,
    interval_s=4.0,
    startup_s=2.0,
    warmup_s=4.0,
    notice_s=2.0,
    preemptions=(("A10G-spot", 0.4), ("L40S-spot", 0.55)),
)


@pytest.mark.timeout(90)
async def test_controller_day_grows_shrinks_and_survives_preemption() -> None:
    before = {p.pid for p in _children()}
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False, color_system=None)

    day = await run_day(SHORT_DAY, console=console)

    assert {p.pid for p in _children()} <= before, "child processes left behind"
    assert day.load.lost == 0, day.load.errors
    assert day.load.requests > 80 and not day.errors
    assert day.policy == "adaptive"
    # Grows with the day: more ready replicas at the busiest moment than at the start ...
    length = SHORT_DAY.day_modelled_s
    times = [day.day_start + length * k / 40 for k in range(41)]
    ready = [sum(day.ready(t).values()) for t in times]
    peak = max(range(len(ready)), key=ready.__getitem__)
    assert ready[peak] > ready[0], ready
    # ... and shrinks after it, the removed replicas drained before they stopped.
    assert min(ready[peak:]) < ready[peak], ready
    drained = [s for s in day.spans if s.how == "stopped"]
    assert any(s.draining is not None and s.draining > times[peak] for s in drained), day.spans
    for s in drained:
        assert s.draining is not None and s.draining <= s.end, s
    # A spot replica pre-empted with a notice, the gateway continuing what ran on it.
    assert day.preemptions_played >= 1
    killed = [s for s in day.spans if s.how == "killed"]
    assert all(s.notice is not None and s.notice < s.end for s in killed), killed
    assert {s.pool for s in killed} <= {"A10G-spot", "L40S-spot"}

    print_day(day, console)
    out = buf.getvalue()
    assert "pre-empted" in out and "attributed $" in out
    summary = _table_row(out, "attributed $", f"{day.load.requests}")
    assert summary["lost"] == "0" and summary["pre-empted"].startswith(str(len(killed)))


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
        # a 2,000-token prompt needs ~0.5 s of L4 prefill: over 3x a 50 ms TTFT target (the
        # tightest the gateway lets a client ask for)
        shed = await replay(
            gateway, "llama-3.1-8b", [TraceRequest(0.0, 2000, 10)], time_scale=0.2, ttft_slo_s=0.05
        )
    ok = served.outcomes[0]
    assert (ok.status, ok.tokens, ok.attempts) == ("ok", 10, 1)
    assert ok.replica is not None
    assert shed.outcomes[0].status == "shed" and not shed.outcomes[0].lost
    s = shed.summary()
    assert (s.shed, s.lost, s.slo_attainment) == (1, 0, 0.0)


def test_the_planner_sees_day_time_and_removals_wait_for_ready_replicas() -> None:
    """The demo's two policy adapters: a compressed day seen as a day, and the shared
    make-before-break rule (core.shaping.wait_for_ready, tested in test_planner) around it."""
    from fleetpilot.catalogue import load_catalogue
    from fleetpilot.core.capacity import Plan, PlanParams
    from fleetpilot.core.model import Demand, Replica, ReplicaState, Snapshot
    from fleetpilot.core.shaping import wait_for_ready
    from fleetpilot.demo_controller import in_day_time

    a, b = load_catalogue().pools("llama-3.1-8b", ["A10G"])
    a, b = replace(a, target=2), replace(b, target=2)
    seen: list[Snapshot] = []

    def move(snapshot: Snapshot, state: object, params: PlanParams) -> tuple[Plan, object]:
        seen.append(snapshot)
        return Plan({a.name: 0, b.name: 2}), state

    assert b.profile is not None
    starting = tuple(
        Replica(f"x/{i}", b.name, "llama-3.1-8b", "http://127.0.0.1:1", b.offering, b.profile,
                ReplicaState.STARTING)
        for i in range(2)
    )  # fmt: skip
    demand = {"llama-3.1-8b": Demand(rps=1.0)}
    policy = in_day_time(wait_for_ready(move), 100.0)
    snap = Snapshot(now=3.0, replicas=starting, pools=(a, b), demand=demand)
    plan, _ = policy(snap, None, PlanParams())
    assert plan.targets == {a.name: 2, b.name: 2}  # the new replicas are not ready yet
    ready = tuple(replace(r, state=ReplicaState.READY) for r in starting)
    plan, _ = policy(replace(snap, replicas=ready), None, PlanParams())
    assert plan.targets == {a.name: 0, b.name: 2}  # they carry the load: the removal goes ahead
    assert seen[-1].now == 300.0
    assert seen[-1].pools[0].offering.startup_s == 100 * a.offering.startup_s


async def test_pooled_lengths_average_over_windows_weighted_by_rate() -> None:
    from fleetpilot.core.model import Demand
    from fleetpilot.demo_controller import PooledLengths

    class Windows:
        def __init__(self) -> None:
            self.seen = [Demand(1.0, 100, 10), Demand(3.0, 200, 50), Demand(0.0, 999, 999)]

        async def demand(self) -> dict[str, Demand]:
            return {"m": self.seen.pop(0)}

    pooled = PooledLengths(Windows(), windows=2)
    assert (await pooled.demand())["m"] == Demand(1.0, 100, 10)
    second = (await pooled.demand())["m"]
    assert (second.rps, second.mean_prompt_tokens, second.mean_output_tokens) == (3.0, 175, 40)
    third = (await pooled.demand())["m"]  # no requests: the rate is 0, the lengths are kept
    assert (third.rps, third.mean_prompt_tokens, third.mean_output_tokens) == (0.0, 175, 40)


def _part(name: str, width: int = 220) -> str:
    """The demo's part ``name`` run alone, its output; it must exit 0."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    code = run_demo(10, ["cost_slo"], seed=1, console=console, parts=[name])
    out = buf.getvalue()
    assert code == 0, out
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]


def _rows(out: str) -> list[list[str]]:
    """The cells of every table body line of ``out``."""
    return [_cells(line) for line in out.splitlines() if line.startswith("│")]


@pytest.mark.timeout(120)
def test_the_tenants_part_shows_one_tenant_refused_for_quota_and_the_other_served() -> None:
    out = _part("tenants", width=200)
    header = next(line for line in out.splitlines() if line.startswith("┃") and "spend" in line)
    names = _cells(header)
    rows = {cells[0]: dict(zip(names, cells, strict=True)) for cells in _rows(out)}
    research, product = rows["research"], rows["product"]
    assert int(research["429 insufficient_quota"]) > 0
    assert int(research["served"]) == int(research["settled requests"]) > 0
    assert float(research["spend $"]) <= 0.0006
    assert product["429 insufficient_quota"] == "0" and product["served"] == product["sent"]


@pytest.mark.timeout(120)
def test_the_guard_part_refuses_each_attack_with_its_code_and_serves_the_rest() -> None:
    out = _part("guard")
    outcomes = {r[0]: r[2] for r in _rows(out)}
    assert outcomes["prompt injection"] == "prompt_injection"
    assert outcomes["the same, in base64"] == "prompt_injection"
    assert outcomes["injection in a tool result"] == "indirect_prompt_injection"
    assert outcomes["honest, with trigger words"] == "served"
    assert "the replica saw: My card [CARD_1] was charged twice" in out


@pytest.mark.timeout(120)
def test_the_rag_part_reindexes_one_chunk_and_retrieves_with_citations() -> None:
    out = _part("rag")
    assert "skipped: scan.pdf" in out and "1 changed, 3 unchanged, 1 chunk embedded" in out
    got = {r[0]: r[2] for r in _rows(out) if "chat with retrieval" in r[0]}
    assert "billing/restart.md" in got["chat with retrieval: cited"]
    assert got["chat with retrieval: poisoned chunk"] == "left out"
