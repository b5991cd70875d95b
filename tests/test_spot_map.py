"""Spot maps: each trace says which offering it describes, and nothing is guessed from values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.model import CapacityClass, Pool
from fleetpilot.errors import ConfigError
from fleetpilot.sim.fluid import NO_LIMIT
from fleetpilot.sim.spot import request_preemptions, window_spot
from fleetpilot.traces import load_spot_map

MODEL = "llama-3.1-8b"
SPOT_16 = "skypilot-spot-traces/availability/16-node/aws-08-27-2023/{}_v100_1.json"


def spot_pools() -> tuple[Pool, ...]:
    return tuple(load_catalogue().pools(MODEL, ["A10G", "A100-80G"], [CapacityClass.SPOT]))


def trace(dir: Path, name: str, data: list[int], gap: float = 600.0) -> Path:
    path = dir / name
    path.write_text(json.dumps({"metadata": {"gap_seconds": gap}, "data": data}))
    return path


def write_map(dir: Path, text: str, name: str = "spot.yaml") -> Path:
    path = dir / name
    path.write_text(text)
    return path


def test_each_trace_bounds_only_the_offering_it_names(tmp_path: Path) -> None:
    trace(tmp_path, "a100.json", [2, 1, 0, 2])
    trace(tmp_path, "z0.json", [1, 0, 1, 1])
    spot = load_spot_map(write_map(tmp_path, """
traces:
  - {file: a100.json, accelerator: A100-80G, counts: instances, replicas_per_instance: 4}
  - {file: z0.json, accelerator: A10G, zone: 0, counts: open}
"""))  # fmt: skip
    a10g, a100 = spot_pools()
    assert a10g.offering.accelerator == "A10G" and a10g.offering.zones == 3
    played = window_spot(spot, (a10g, a100), 600.0, 4)
    # 4-GPU nodes of A100 hold four one-GPU replicas each: the count is not the replica cap
    assert played.available == {a100.name: [8, 4, 0, 8]}
    # zone 0 of A10G follows its 0/1 trace (no bound when open); zones 1 and 2 have none
    open_ = a10g.offering.within_quota(NO_LIMIT)
    assert played.zones == {a10g.name: [[open_, 0, open_, open_], [NO_LIMIT] * 4, [NO_LIMIT] * 4]}

    pre, notes = request_preemptions(spot, (a10g, a100), 4 * 600.0, notice_s=120.0)
    assert pre[a100.name] == [480.0] * 4 + [1080.0] * 4  # a node lost is four replicas
    assert pre[a10g.name] == [480.0]  # an 'open' trace closing takes one
    assert f"{a100.name}: 8 pre-emptions from 1 trace(s)" in notes


def test_a_pool_no_trace_describes_keeps_its_catalogue_rate(tmp_path: Path) -> None:
    trace(tmp_path, "a100.json", [1, 1])
    spot = load_spot_map(write_map(tmp_path, """
traces: [{file: a100.json, accelerator: A100-80G, counts: instances}]
"""))  # fmt: skip
    a10g, a100 = spot_pools()
    pre, notes = request_preemptions(spot, (a10g, a100), 1200.0, notice_s=120.0)
    assert pre == {a10g.name: "rate", a100.name: []}
    assert any("interruption rate" in n for n in notes)
    assert a10g.name not in window_spot(spot, (a10g, a100), 600.0, 2).available


def test_a_run_past_a_trace_is_an_error_unless_the_map_loops_it(tmp_path: Path) -> None:
    trace(tmp_path, "a100.json", [1, 0])
    text = "traces: [{file: a100.json, accelerator: A100-80G, counts: instances}]\n"
    spot = load_spot_map(write_map(tmp_path, text))
    pools = spot_pools()
    with pytest.raises(ConfigError, match=r"covers 0\.3 h, the run 1\.0 h.*loop: true"):
        window_spot(spot, pools, 600.0, 6)
    with pytest.raises(ConfigError, match="loop: true"):
        request_preemptions(spot, pools, 3600.0, notice_s=0.0)
    looped = load_spot_map(write_map(tmp_path, "loop: true\n" + text, "loop.yaml"))
    assert window_spot(looped, pools, 600.0, 6).available[pools[1].name] == [1, 0] * 3
    pre, _ = request_preemptions(looped, pools, 3600.0, notice_s=0.0)
    assert pre[pools[1].name] == [600.0, 1800.0, 3000.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("traces: []", "expected a spot map"),
        ("traces: [{file: t.json, accelerator: A100-80G}]", "counts is required"),
        ("traces: [{file: t.json, accelerator: A100-80G, counts: nodes}]", "'instances' or 'open'"),
        (
            "traces: [{file: t.json, accelerator: A100-80G, counts: open}]",
            "not an 'open' \\(0/1\\)",
        ),
        ("traces: [{file: t.json, accelerator: A, counts: instances, zone: -1}]", "zone must be"),
        ("traces: [{file: t.json, accelerator: A, counts: instances, node: 4}]", r"unknown key"),
        ("loop: yes please\ntraces: [{file: t.json, accelerator: A, counts: instances}]", "loop"),
        (
            "traces: [{file: t.json, accelerator: A, counts: instances},"
            " {file: t.json, accelerator: A, zone: 1, counts: instances}]",
            "described twice",
        ),
        ("traces: [{file: missing.json, accelerator: A, counts: instances}]", "no such trace"),
    ],
)
def test_bad_spot_maps_say_what_is_wrong(tmp_path: Path, body: str, message: str) -> None:
    trace(tmp_path, "t.json", [3, 2])
    with pytest.raises(ConfigError, match=message):
        load_spot_map(write_map(tmp_path, body))


def test_a_bare_trace_is_refused_rather_than_applied_to_every_pool(tmp_path: Path) -> None:
    path = trace(tmp_path, "t.json", [1, 0])
    with pytest.raises(ConfigError, match="does not say what it describes"):
        load_spot_map(path)


def test_a_zone_beyond_the_pools_zones_is_an_error(tmp_path: Path) -> None:
    trace(tmp_path, "t.json", [1, 1])
    spot = load_spot_map(write_map(tmp_path, """
traces: [{file: t.json, accelerator: A100-80G, zone: 5, counts: instances}]
"""))  # fmt: skip
    with pytest.raises(ConfigError, match="spreads over 2 zone"):
        window_spot(spot, spot_pools(), 600.0, 2)


def test_simulate_takes_several_spot_maps_and_plays_the_shared_traces(tmp_path: Path) -> None:
    """The CLI end to end on the real 16-node availability traces (three zones of A100 spot in
    one map, A10G whole in another), and its error for a run past a trace's end."""
    data = os.environ.get("FLEETPILOT_DATA")
    root = Path(data) if data else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"public trace data not found at {root}")
        pytest.skip(f"public trace data not found at {root}")
    zones = ["us-east-2b", "us-west-2a"]
    a100 = "".join(
        f"  - {{file: {SPOT_16.format(z)}, accelerator: A100-80G, zone: {k}, counts: instances}}\n"
        for k, z in enumerate(zones)
    )
    write_map(tmp_path, "traces:\n" + a100, "a100.yaml")
    west = SPOT_16.format("us-west-2c")
    a10g = f"traces: [{{file: {west}, accelerator: A10G, counts: instances}}]\n"
    write_map(tmp_path, a10g, "a10g.yaml")
    env = {**os.environ, "FLEETPILOT_DATA": str(root)}
    args = ["--hours", "0.2", "--policy", "spot_hedge", "--accelerators", "A10G,A100-80G"]
    run = subprocess.run(
        [sys.executable, "-m", "fleetpilot", "simulate", *args, "--spot", "a100.yaml",
         "--spot", "a10g.yaml", "--out", "out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "A100-80G-spot:" in report and "A10G-spot:" in report and "pre-emptions from" in report
    # the same A100 zone in both maps is refused
    write_map(tmp_path, "traces:\n" + a100.splitlines()[0] + "\n", "again.yaml")
    again = subprocess.run(
        [sys.executable, "-m", "fleetpilot", "simulate", *args, "--spot", "a100.yaml",
         "--spot", "again.yaml", "--out", "out2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert again.returncode == 2 and "described twice" in again.stderr
