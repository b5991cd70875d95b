"""The pure core: perf model, batching engine and routing policies, on the real catalogue."""

from __future__ import annotations

import ast
import pathlib
import random
from dataclasses import replace
from importlib import resources

import pytest

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.model import (
    Action,
    CapacityClass,
    Profile,
    Replica,
    ReplicaLoad,
    ReplicaState,
    Request,
    ServiceClass,
    Snapshot,
)
from fleetpilot.core.perf import BatchEngine, Sequence, marginal_cost, predict, step_time
from fleetpilot.core.routing import DEFAULT_PARAMS, ROUTERS, RoutingParams, cost_slo, tune_headroom
from fleetpilot.errors import ConfigError

CAT = load_catalogue()
MODEL = "llama-3.1-8b"


def replica(acc: str, cls: str = "on_demand", rid: str | None = None, **load: int) -> Replica:
    return Replica(
        id=rid or f"{acc}-{cls}",
        pool=f"{acc}-{cls}",
        model=MODEL,
        url=f"http://127.0.0.1/{acc}",
        offering=CAT.offering(MODEL, acc, cls),
        profile=CAT.profile(MODEL, acc),
        load=ReplicaLoad(**load),
    )


# -- perf model -------------------------------------------------------------------------------


def test_step_time_interpolates_and_extrapolates() -> None:
    p = CAT.profile(MODEL, "A10G")
    (b0, t0), (b1, t1) = p.step_points[2], p.step_points[3]
    assert step_time(p, b0) == pytest.approx(t0)
    assert step_time(p, (b0 + b1) // 2) == pytest.approx(
        t0 + (t1 - t0) * ((b0 + b1) // 2 - b0) / (b1 - b0)
    )
    assert step_time(p, 0) == step_time(p, 1)
    last_b, last_t = p.step_points[-1]
    assert step_time(p, last_b + 4) > last_t


def test_catalogue_figures_are_consistent() -> None:
    for model in CAT.models:
        for acc in CAT.accelerators_for(model):
            od = CAT.offering(model, acc, CapacityClass.ON_DEMAND)
            spot = CAT.offering(model, acc, CapacityClass.SPOT)
            res = CAT.offering(model, acc, CapacityClass.RESERVED)
            assert spot.price_per_hour < od.price_per_hour
            assert res.price_per_hour < od.price_per_hour
            assert spot.interruption_rate > 0 and od.interruption_rate == 0
            p = CAT.profile(model, acc)
            steps = [t for _, t in p.step_points]
            assert steps == sorted(steps), f"{model}@{acc}: step time must grow with batch"
    # faster accelerators decode faster: bandwidth ordering survives the derivation
    order = ["L4", "A10G", "L40S", "A100-80G", "H100"]
    times = [step_time(CAT.profile(MODEL, a), 1) for a in order]
    assert times == sorted(times, reverse=True)


def test_catalogue_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError):
        CAT.profile("no-such-model", "A10G")
    with pytest.raises(ConfigError):
        CAT.offering(MODEL, "TPU", "spot")


def test_catalogue_quotas_are_none_unless_set_and_read_in_gpus(tmp_path: pathlib.Path) -> None:
    assert all(p.offering.quota is None for p in CAT.pools(MODEL, None, tuple(CapacityClass)))
    assert CAT.offering(MODEL, "A10G", "spot").within_quota(10_000) == 10_000
    packaged = resources.files("fleetpilot").joinpath("catalogue.yaml").read_text()
    path = tmp_path / "catalogue.yaml"
    path.write_text(packaged + "quotas:\n  A100-80G: {on_demand: 10, spot: 64}\n")
    cat = load_catalogue(path)
    assert cat.offering(MODEL, "A100-80G", "on_demand").quota == 10
    assert cat.offering("llama-2-70b", "A100-80G", "on_demand").quota == 2  # 4 GPUs a replica
    assert cat.offering("llama-2-70b", "A100-80G", "spot").quota == 16
    assert cat.offering(MODEL, "A100-80G", "reserved").quota is None
    assert cat.offering(MODEL, "L40S", "on_demand").quota is None
    bad_quotas = (
        "A100-80G: {on_demand: -1}",
        "A100-80G: {on_demand: 1.5}",
        "A100-80G: {on_demand: '64'}",
        "A100-80G: {ondemand: 8}",  # not a capacity class
        "TPU: {spot: 8}",  # not an accelerator of the catalogue
    )
    for bad in bad_quotas:
        path.write_text(packaged + f"quotas:\n  {bad}\n")
        with pytest.raises(ConfigError):
            load_catalogue(path)


def test_prediction_grows_with_load() -> None:
    p = CAT.profile(MODEL, "L40S")
    idle = predict(p, ReplicaLoad(), 500, 100)
    assert idle.ttft == pytest.approx(step_time(p, 1) + 500 / p.prefill_rate)
    assert idle.e2e == pytest.approx(idle.ttft + 99 * step_time(p, 1))
    busy = predict(p, ReplicaLoad(running=30, remaining_decode_tokens=3000), 500, 100)
    full = predict(
        p,
        ReplicaLoad(
            running=p.max_batch, waiting=10, remaining_decode_tokens=200 * (p.max_batch + 10)
        ),
        500,
        100,
    )
    assert idle.ttft < busy.ttft < full.ttft
    assert full.batch == p.max_batch


def test_marginal_cost_prefers_fuller_batches() -> None:
    r = replica("A100-80G")
    assert marginal_cost(r, 100, 100, 32) < marginal_cost(r, 100, 100, 1)


def test_engine_executes_continuous_batching_exactly() -> None:
    p = CAT.profile(MODEL, "A10G")
    eng = BatchEngine(p)
    eng.add(Sequence("a", prompt_tokens=100, max_tokens=2))
    eng.add(Sequence("b", prompt_tokens=300, max_tokens=3))
    step = eng.begin_step()
    assert step.admitted == ("a", "b")
    assert step.duration == pytest.approx(step_time(p, 2) + 400 / p.prefill_rate)
    assert [s.id for s in eng.end_step()] == ["a", "b"]
    eng.add(Sequence("c", prompt_tokens=50, max_tokens=1))  # joins at the next step
    step = eng.begin_step()
    assert step.admitted == ("c",)
    assert step.duration == pytest.approx(step_time(p, 3) + 50 / p.prefill_rate)
    done = eng.end_step()
    assert {s.id for s in done if s.done} == {"a", "c"}
    assert eng.load() == ReplicaLoad(running=1, remaining_decode_tokens=1)
    assert eng.begin_step().duration == pytest.approx(step_time(p, 1))
    eng.end_step()
    assert not eng.busy


def test_engine_respects_kv_capacity() -> None:
    p = CAT.profile(MODEL, "A10G")
    eng = BatchEngine(p)
    for i in range(p.max_batch + 3):
        eng.add(Sequence(str(i), 10, 5))
    assert eng.begin_step().batch == p.max_batch
    load = eng.load()
    assert (load.running, load.waiting) == (p.max_batch, 3)
    assert eng.cancel("0") and eng.cancel(str(p.max_batch + 2)) and not eng.cancel("nope")


def _replay(p: Profile, jobs: list[tuple[int, int, int]], jump: bool) -> dict[str, tuple[int, int]]:
    """(first-token step, last-token step) per sequence; ``jobs`` are (arrival step, prompt,
    output).  ``jump`` drives the engine as the simulator does (``finish_step`` and
    ``fast_forward`` over steps that change nothing), else one ``end_step`` per step."""
    eng = BatchEngine(p)
    out: dict[str, tuple[int, int]] = {}
    first: dict[str, int] = {}
    step, i = 0, 0
    while i < len(jobs) or eng.busy:
        while i < len(jobs) and jobs[i][0] <= step:
            eng.add(Sequence(str(i), jobs[i][1], jobs[i][2]))
            i += 1
        if not eng.busy:
            step = jobs[i][0]
            continue
        admitted = eng.begin_step().admitted
        step += 1
        if jump and not admitted:
            nxt = jobs[i][0] if i < len(jobs) else 1 << 30
            k = max(0, min(eng.steps_to_finish() - 1, nxt - step))
            eng.fast_forward(k)
            step += k
        first.update({sid: step for sid in admitted})
        finished = eng.finish_step() if jump else [s for s in eng.end_step() if s.done]
        for s in finished:
            assert s.generated == s.max_tokens
            out[s.id] = (first[s.id], step)
    return out


def test_engine_fast_forward_matches_stepping_one_by_one() -> None:
    p = CAT.profile(MODEL, "A10G")
    rng = random.Random(7)
    jobs, t = [], 0
    for _ in range(300):
        t += rng.randrange(0, 6)
        jobs.append((t, rng.randrange(1, 2000), rng.randrange(1, 80)))
    stepped = _replay(p, jobs, jump=False)
    assert len(stepped) == 300
    assert _replay(p, jobs, jump=True) == stepped


def test_engine_counts_tokens_of_cancelled_and_jumped_sequences() -> None:
    p = CAT.profile(MODEL, "A10G")
    eng = BatchEngine(p)
    eng.add(Sequence("a", 10, 100))
    eng.add(Sequence("b", 10, 50))
    eng.begin_step()
    eng.finish_step()
    eng.begin_step()
    assert eng.steps_to_finish() == 49
    eng.fast_forward(40)
    assert eng.load().remaining_decode_tokens == 150 - 2 * 41
    with pytest.raises(ValueError):
        eng.fast_forward(9)  # the 9th step end would finish "b"
    assert eng.cancel("a")
    assert [(s.id, s.generated) for s in eng.sequences()] == [("b", 41)]
    assert eng.load() == ReplicaLoad(running=1, remaining_decode_tokens=9)


# -- routing ----------------------------------------------------------------------------------


def request(deadline: float = 2.0, **kw: object) -> Request:
    base = Request(model=MODEL, prompt_tokens=200, max_tokens=100, deadline=deadline)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_cost_slo_picks_cheapest_replica_that_meets_deadline() -> None:
    cheap_slow = replica("L4", "spot")
    fast = replica("H100", "on_demand")
    snap = Snapshot(now=0.0, replicas=(fast, cheap_slow))
    d = cost_slo(request(deadline=2.0), snap)
    assert d.action is Action.ROUTE and d.replica_id == cheap_slow.id
    assert d.predicted_ttft <= 2.0 * DEFAULT_PARAMS.headroom
    # a tight deadline only the fast replica meets
    tight = step_time(fast.profile, 1) + 200 / fast.profile.prefill_rate + 0.001
    assert cost_slo(request(deadline=tight), snap).replica_id == fast.id


def test_cost_slo_skips_draining_and_unhealthy_spot() -> None:
    spot = replace(replica("L4", "spot"), state=ReplicaState.DRAINING)
    sick = replace(replica("A10G", "spot"), healthy=False)
    od = replica("L40S")
    d = cost_slo(request(), Snapshot(0.0, (spot, sick, od)))
    assert d.replica_id == od.id


def test_cost_slo_sheds_interactive_and_queues_batch_when_hopeless() -> None:
    p = CAT.profile(MODEL, "L4")
    swamped = replica("L4", running=p.max_batch, waiting=200, remaining_decode_tokens=216 * 500)
    snap = Snapshot(now=0.0, replicas=(swamped,))
    shed = cost_slo(request(deadline=0.5), snap)
    assert shed.action is Action.SHED and shed.retry_after >= 1.0
    # within shed_factor of the budget it is still served by the fastest replica
    lenient = cost_slo(request(deadline=0.5), snap, RoutingParams(shed_factor=1e6))
    assert lenient.action is Action.ROUTE
    queued = cost_slo(request(deadline=5.0, service_class=ServiceClass.BATCH), snap)
    assert queued.action is Action.QUEUE and 0 < queued.retry_after <= 5.0
    late = cost_slo(request(deadline=-1.0, service_class=ServiceClass.BATCH), snap)
    assert late.action is Action.ROUTE


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_every_router_handles_an_empty_fleet_and_other_models(name: str) -> None:
    other = replace(replica("L4"), model="other")
    d = ROUTERS[name](request(), Snapshot(0.0, (other,)), RoutingParams())
    assert d.action is Action.UNAVAILABLE


def test_baselines_spread_and_balance() -> None:
    reps = tuple(replica("L4", rid=f"r{i}") for i in range(3))
    rr = [
        ROUTERS["round_robin"](request(), Snapshot(0.0, reps, tick=t), RoutingParams()).replica_id
        for t in range(6)
    ]
    assert rr == ["r0", "r1", "r2", "r0", "r1", "r2"]
    loaded = (
        replace(reps[0], load=ReplicaLoad(running=5)),
        reps[1],
        replace(reps[2], load=ReplicaLoad(running=1)),
    )
    assert (
        ROUTERS["least_load"](request(), Snapshot(0.0, loaded), RoutingParams()).replica_id == "r1"
    )
    picks = {
        ROUTERS["power_of_two"](
            request(), Snapshot(0.0, loaded, tick=t), RoutingParams()
        ).replica_id
        for t in range(50)
    }
    assert "r0" not in picks  # the busiest never wins a pair
    assert picks == {"r1", "r2"}


def test_routing_is_replayable() -> None:
    reps = tuple(replica(a, rid=a) for a in ("L4", "A10G", "L40S"))
    for name, router in ROUTERS.items():
        a = [router(request(), Snapshot(0.0, reps, tick=t), RoutingParams()) for t in range(20)]
        b = [router(request(), Snapshot(0.0, reps, tick=t), RoutingParams()) for t in range(20)]
        assert a == b, name


# -- purity gate ------------------------------------------------------------------------------

FORBIDDEN = {
    "asyncio", "socket", "ssl", "select", "selectors", "subprocess", "threading",
    "multiprocessing", "os", "io", "time", "datetime", "sqlite3", "http", "urllib", "aiohttp",
    "httpx", "requests", "redis", "yaml", "json", "pathlib", "shutil", "tempfile", "logging",
    "signal", "uvloop", "prometheus_client", "openai", "pydantic", "matplotlib",
}  # fmt: skip


def test_core_imports_no_io_network_or_async_package() -> None:
    core = pathlib.Path(__file__).parents[1] / "src" / "fleetpilot" / "core"
    files = sorted(core.rglob("*.py"))  # subpackages too, when core grows them
    assert files
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top in FORBIDDEN or (
                    top == "fleetpilot" and not n.startswith("fleetpilot.core")
                ):
                    offenders.append(f"{path.relative_to(core)}: {n}")
    assert not offenders, offenders


def test_learnt_headroom_moves_down_on_a_miss_up_on_a_hit_and_settles_at_target_miss() -> None:
    p = RoutingParams()
    assert tune_headroom(0.5, False, p) == pytest.approx(0.5 - p.headroom_step)
    assert tune_headroom(0.5, True, p) == pytest.approx(0.5 + p.headroom_up)
    assert tune_headroom(p.headroom, True, p) == p.headroom  # the start is the most
    assert tune_headroom(p.min_headroom, False, p) == p.min_headroom
    assert tune_headroom(0.5, False, replace(p, target_miss=0.0)) == 0.5  # fixed
    # one miss in every 1 / target_miss requests is no drift
    h = 0.5
    for k in range(round(10 / p.target_miss)):
        h = tune_headroom(h, k % round(1 / p.target_miss) != 0, p)
    assert h == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError):
        RoutingParams(min_headroom=0.9)
    # the router fills only the learnt share of the budget
    slow = replica("L4", "spot")
    fast = replica("H100")
    need = predict(slow.profile, slow.load, 200, 100).ttft
    req = request(deadline=need / 0.5)  # slow meets it at 0.75 of the budget, not at 0.3
    assert cost_slo(req, Snapshot(0.0, (fast, slow))).replica_id == slow.id
    assert cost_slo(req, Snapshot(0.0, (fast, slow), headroom=0.3)).replica_id == fast.id
