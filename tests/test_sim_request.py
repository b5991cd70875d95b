"""The request-level simulator: exact totals on hand-made traces, lifecycle, pre-emption."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.capacity import Plan, PlanParams
from fleetpilot.core.model import Pool, ServiceClass, Snapshot
from fleetpilot.core.perf import BatchEngine, Sequence, step_time
from fleetpilot.core.routing import RoutingParams
from fleetpilot.core.series import RateSeries, synthesise
from fleetpilot.core.workload import TraceRequest, synthetic_trace
from fleetpilot.sim.events import EventLoop
from fleetpilot.sim.request_level import SimResult, simulate

CAT = load_catalogue()
MODEL = "llama-3.1-8b"
POOLS = {p.name: p for p in CAT.pools(MODEL, ["A10G", "L40S"])}
A10G = CAT.profile(MODEL, "A10G")
OD, SPOT = POOLS["A10G-on_demand"], POOLS["A10G-spot"]


def st(batch: int) -> float:
    return step_time(A10G, batch)


def req(at: float, prompt: int = 500, out: int = 50, batch: bool = False) -> TraceRequest:
    cls = ServiceClass.BATCH if batch else ServiceClass.INTERACTIVE
    return TraceRequest(arrival=at, prompt_tokens=prompt, max_tokens=out, service_class=cls)


ADDED: list[tuple[str, int, int]] = []  # (request index, prompt, max_tokens) as engines saw them


class Recorder(BatchEngine):
    """A real BatchEngine that notes every sequence added to it (for continuation checks)."""

    def add(self, seq: Sequence) -> None:
        ADDED.append((seq.id, seq.prompt_tokens, seq.max_tokens))
        super().add(seq)


def fingerprint(res: SimResult) -> str:
    arrays = [res.arrival, res.ttft, res.e2e, res.status, res.pool, res.continued]
    return json.dumps(
        [
            res.summary(),
            [a.tolist() for a in (*arrays, res.service_class, res.output_tokens)],
            res.timeline.rows(),
        ]
    )


# -- the event loop -----------------------------------------------------------------------------


def test_event_loop_orders_by_time_then_by_scheduling_order() -> None:
    loop = EventLoop()
    log: list[tuple[float, str]] = []
    for name, at in (("c", 2.0), ("a", 1.0), ("b", 1.0)):
        loop.schedule(at, lambda n=name: log.append((loop.now, n)))
    loop.schedule(1.0, lambda: loop.schedule(1.0, lambda: log.append((loop.now, "d"))))
    loop.run(until=1.5)
    assert log == [(1.0, "a"), (1.0, "b"), (1.0, "d")]
    assert loop.now == 1.5 and loop.peek() == 2.0
    with pytest.raises(ValueError):
        loop.schedule(1.0, print)
    loop.run()
    assert log[-1] == (2.0, "c") and len(loop) == 0


# -- exact timings on one replica -------------------------------------------------------------


def test_single_request_timing_and_cost_are_exact() -> None:
    prompt, out, at = 700, 40, 3.0
    res = simulate([req(at, prompt, out)], [OD], initial={OD.name: 1})
    ttft = st(1) + prompt / A10G.prefill_rate
    assert res.ttft[0] == pytest.approx(ttft, rel=1e-12)
    assert res.e2e[0] == pytest.approx(ttft + (out - 1) * st(1), rel=1e-12)
    s = res.summary()
    assert (s["ok"], s["shed"], s["lost"], s["output_tokens"]) == (1, 0, 0, out)
    end = at + res.e2e[0]
    assert res.duration_s == pytest.approx(end)
    assert s["cost"] == pytest.approx(OD.offering.price_per_hour * end / 3600, rel=1e-12)
    assert s["cost_by_class"]["on_demand"] == pytest.approx(s["cost"])
    assert s["replica_hours_by_class"]["on_demand"] == pytest.approx(end / 3600)
    assert s["slo_attainment"] == 1.0
    assert res.pool[0] == res.pool_names.index(OD.name)


def test_simultaneous_requests_share_steps_as_batch_engine_dictates() -> None:
    (p1, o1), (p2, o2) = (300, 10), (600, 25)
    late_prompt = 200
    trace = [req(1.0, p1, o1), req(1.0, p2, o2), req(1.01, late_prompt, 5)]
    res = simulate(trace, [OD], initial={OD.name: 1})
    first = st(2) + (p1 + p2) / A10G.prefill_rate  # both admitted on the same step
    assert res.ttft[0] == pytest.approx(first) and res.ttft[1] == pytest.approx(first)
    # The third arrives mid-step: it joins the next step, which prefills it with a batch of 3.
    second = st(3) + late_prompt / A10G.prefill_rate
    assert res.ttft[2] == pytest.approx(1.0 + first + second - 1.01)
    # Batch 3 for 4 more steps (third finishes), batch 2 until the first finishes, then 1.
    t = 1.0 + first + second
    t3 = t + 4 * st(3)
    assert res.e2e[2] == pytest.approx(t3 - 1.01)
    t1 = t3 + (o1 - 1 - 1 - 4) * st(2)
    assert res.e2e[0] == pytest.approx(t1 - 1.0)
    assert res.e2e[1] == pytest.approx(t1 + (o2 - o1) * st(1) - 1.0)


def test_batch_work_waits_for_its_deadline_then_takes_the_fastest_replica() -> None:
    # No replica can meet a 10 ms budget: the router queues batch work (it is never shed);
    # at the deadline it is routed to the fastest replica.
    res = simulate([req(1.0, 400, 8, batch=True)], [OD], initial={OD.name: 1}, batch_slo_s=0.01)
    assert res.summary()["ok"] == 1
    assert res.ttft[0] == pytest.approx(0.01 + st(1) + 400 / A10G.prefill_rate)


def test_one_replica_matches_driving_batch_engine_by_hand() -> None:
    """Step by step, a replica in the simulator is BatchEngine run in virtual time."""
    trace = synthetic_trace(300, 4.0, seed=5)
    engine, t, k = BatchEngine(A10G), 0.0, 0
    ttft: dict[int, float] = {}
    e2e: dict[int, float] = {}
    while k < len(trace) or engine.busy:
        if not engine.busy:
            t = max(t, trace[k].arrival)
        while k < len(trace) and trace[k].arrival <= t:  # arrivals up to a boundary join
            engine.add(Sequence(str(k), trace[k].prompt_tokens, trace[k].max_tokens))
            k += 1
        step = engine.begin_step()
        t += step.duration
        for sid in step.admitted:
            ttft[int(sid)] = t - trace[int(sid)].arrival
        for seq in engine.end_step():
            if seq.done:
                e2e[int(seq.id)] = t - trace[int(seq.id)].arrival
    res = simulate(trace, [OD], router="least_load", initial={OD.name: 1})
    assert res.ttft.tolist() == [ttft[i] for i in range(len(trace))]
    assert res.e2e.tolist() == [e2e[i] for i in range(len(trace))]


def test_impossible_ttft_target_is_shed_with_a_reason() -> None:
    trace = [req(0.5, 3000, 20), req(0.6, 100, 5)]
    res = simulate(trace, [OD], initial={OD.name: 1}, ttft_slo_s=0.01)
    s = res.summary()
    assert (s["shed"], s["ok"], s["lost"]) == (2, 0, 0)
    assert s["slo_attainment"] == 0.0 and s["ttft_p99"] is None
    assert all(math.isnan(x) for x in res.ttft)
    assert s["shed_reasons"] == {"the router shed it: no replica can meet its deadline": 2}


# -- lifecycle ----------------------------------------------------------------------------------


def targets_at(schedule: dict[float, dict[str, int]]) -> Any:
    """A capacity policy that sets the given targets from the given times on."""

    def policy(snapshot: Snapshot, state: Any, params: PlanParams) -> tuple[Plan, Any]:
        due = [t for t in schedule if t <= snapshot.now]
        return Plan(dict(schedule[max(due)]) if due else {}), (state or 0) + 1

    return policy


def test_draining_stops_new_work_and_finishes_what_it_has() -> None:
    # Spot is cheaper, so cost_slo uses it while it is up; at t=60 the plan drains it.
    trace = [req(10.0, 200, 1500)] + [req(20.0 + 10 * k, 200, 20) for k in range(10)]
    policy = targets_at({0.0: {SPOT.name: 1, OD.name: 1}, 60.0: {SPOT.name: 0, OD.name: 1}})
    res = simulate(
        trace,
        [OD, SPOT],
        capacity_policy=policy,
        initial={SPOT.name: 1, OD.name: 1},
        control_interval_s=60.0,
    )
    spot_i = res.pool_names.index(SPOT.name)
    served = [int(p) for p in res.pool]
    before = [i for i, r in enumerate(trace) if r.arrival < 60]
    after = [i for i, r in enumerate(trace) if r.arrival >= 60]
    assert all(served[i] == spot_i for i in before)  # including the long one
    assert all(served[i] != spot_i for i in after)
    assert res.summary()["ok"] == len(trace)
    (spot,) = [r for r in res.replicas if r.pool == SPOT.name]
    assert spot.drained_at == 60.0
    assert spot.gone_at == pytest.approx(10.0 + res.e2e[0])  # gone when the long one is done
    assert res.cost_by_pool[SPOT.name] == pytest.approx(
        SPOT.offering.price_per_hour * spot.gone_at / 3600
    )


def test_scale_up_takes_effect_only_after_startup() -> None:
    startup = OD.offering.startup_s
    trace = [req(5.0), req(6.0, batch=True), req(startup + 30.0)]
    res = simulate(trace, [OD], capacity_policy=targets_at({0.0: {OD.name: 1}}), initial={})
    (rep,) = res.replicas
    assert (rep.started, rep.ready_at) == (0.0, startup)
    assert res.status.tolist() == [2, 1, 1]  # shed, ok, ok
    assert res.summary()["shed_reasons"] == {"no replica became ready before the deadline": 1}
    assert 6.0 + res.ttft[1] >= startup  # the batch request waited for the replica
    assert res.ttft[2] == pytest.approx(st(1) + 500 / A10G.prefill_rate)
    assert res.cost == pytest.approx(OD.offering.price_per_hour * res.duration_s / 3600)
    static = simulate(trace, [OD], initial={})
    assert static.summary()["shed"] == 3  # no replica and none starting: shed at once


# -- spot pre-emption ---------------------------------------------------------------------------


def test_preemption_continues_in_flight_work_and_loses_nothing() -> None:
    ADDED.clear()
    trace = [req(1.0 + 0.2 * k, 300 + k, 400) for k in range(6)]
    res = simulate(
        trace,
        [OD, SPOT],
        initial={SPOT.name: 1, OD.name: 1},
        preemptions={SPOT.name: [3.0]},
        notice_s=5.0,
        engine=Recorder,
    )
    s = res.summary()
    assert (s["lost"], s["shed"], s["ok"], s["preemptions"]) == (0, 0, len(trace), 1)
    assert s["continued"] >= 1 and s["continuations"] == int(res.continued.sum())
    assert res.output_tokens.tolist() == [r.max_tokens for r in trace]
    assert s["output_tokens"] == sum(r.max_tokens for r in trace)
    od_i = res.pool_names.index(OD.name)
    segments: dict[int, list[tuple[int, int]]] = {}
    for sid, prompt, out in ADDED:
        segments.setdefault(int(sid), []).append((prompt, out))
    for i in map(int, res.continued.nonzero()[0]):
        first, cont = segments[i]
        assert first == (trace[i].prompt_tokens, trace[i].max_tokens)
        done = trace[i].max_tokens - cont[1]
        assert done > 0  # it had tokens; the continuation asks for the rest only
        assert cont[0] == trace[i].prompt_tokens + done  # prompt + what was generated
        assert res.pool[i] == od_i  # finished on the survivor
        assert res.ttft[i] < 3.0  # its first token came from the pre-empted replica
        assert 1.0 + 0.2 * i + res.e2e[i] > 3.0 + 5.0
    spot = [r for r in res.replicas if r.pool == SPOT.name]
    assert spot[0].preempted and spot[0].gone_at == 8.0
    assert spot[1].started == 3.0  # the replacement is launched at the notice
    assert int(res.timeline.preemptions.sum()) == 1


def test_a_continuation_that_can_never_be_placed_is_reported_lost() -> None:
    # Its first prompt fits the 0.3 s target; prompt + 2,000-odd generated tokens would take
    # more than 3x the target to prefill even on an idle replica, so the router sheds it.
    res = simulate(
        [req(0.0, 500, 3000)],
        [OD, SPOT],
        initial={SPOT.name: 1, OD.name: 1},
        preemptions={SPOT.name: [80.0]},
        notice_s=1.0,
        ttft_slo_s=0.3,
    )
    s = res.summary()
    assert (s["lost"], s["continuations"], s["ok"]) == (1, 1, 0)
    assert s["lost_reasons"] == {"the router sheds its continuation even on an idle fleet": 1}
    assert 0 < res.output_tokens[0] < 3000 and math.isnan(res.e2e[0])


def test_rate_preemptions_and_policy_runs_are_deterministic() -> None:
    trace = synthetic_trace(1800, 2.0, seed=3)
    flaky = replace(SPOT.offering, interruption_rate=4.0)  # per replica-hour
    pools = [replace(SPOT, offering=flaky), POOLS["L40S-on_demand"]]

    def reactive(snapshot: Snapshot, state: Any, params: PlanParams) -> tuple[Plan, Any]:
        rps = snapshot.demand[MODEL].rps
        return Plan({"A10G-spot": 1 + int(rps), "L40S-on_demand": 1}), state

    def run() -> SimResult:
        return simulate(
            trace,
            pools,
            capacity_policy=reactive,
            initial={"A10G-spot": 1, "L40S-on_demand": 1},
            preemptions="rate",
            notice_s=2.0,
            seed=11,
        )

    a, b = run(), run()
    assert fingerprint(a) == fingerprint(b)
    s = a.summary()
    assert s["ok"] + s["shed"] + s["lost"] == s["requests"] == len(trace)
    assert s["lost"] == 0 and s["preemptions"] > 0
    served = [r.max_tokens for r, status in zip(trace, a.status, strict=True) if status == 1]
    assert s["output_tokens"] == sum(served) and s["continuations"] > 0


def test_speed_smoke_five_thousand_requests() -> None:
    trace = synthetic_trace(1000, 5.0, seed=7)
    assert len(trace) > 4000
    pools = [POOLS["A10G-spot"], POOLS["L40S-on_demand"]]
    res = simulate(
        trace,
        pools,
        initial={"A10G-spot": 2, "L40S-on_demand": 1},
        preemptions={"A10G-spot": [300.0]},
        window_s=60.0,
    )
    s = res.summary()
    assert s["ok"] + s["shed"] + s["lost"] == len(trace) and s["lost"] == 0
    assert int(res.timeline.arrivals.sum()) == len(trace)
    assert res.timeline.cost_per_hour.mean() * len(res.timeline.start) * 60 / 3600 == (
        pytest.approx(s["cost"], rel=0.02)
    )
    assert s["ttft_p50"] <= s["ttft_p95"] <= s["ttft_p99"]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        simulate([req(2.0), req(1.0)], [OD])
    with pytest.raises(ValueError, match="router"):
        simulate([req(1.0)], [OD], router="nope")
    with pytest.raises(ValueError, match="initial"):
        simulate([req(1.0)], [OD], initial={"elsewhere": 1})
    other = Pool("other", "another-model", OD.offering, 1, A10G)
    with pytest.raises(ValueError, match="model"):
        simulate([req(1.0)], [OD, other])


def test_learnt_router_headroom_holds_the_slo_under_bursty_arrivals() -> None:
    # ServeGen's shape: bursty arrivals (cv 3), ~1,150-token prompts, on a fleet with room
    series = RateSeries(
        window_s=300.0, rps=(10.0, 10.0), mean_prompt_tokens=(1155.0,) * 2,
        mean_output_tokens=(211.0,) * 2, cv=(3.0, 3.0),
    )  # fmt: skip
    trace = synthesise(series, seed=1)
    pools = CAT.pools(MODEL, ["A10G", "L40S"])
    init = {"A10G-spot": 2, "L40S-spot": 6}
    learnt = simulate(trace, pools, initial=init).summary()["slo_attainment"]
    fixed = simulate(
        trace, pools, initial=init, routing_params=RoutingParams(target_miss=0.0)
    ).summary()["slo_attainment"]
    assert learnt >= 0.985  # packing at a fixed 0.75 of the budget misses far more
    assert fixed < learnt - 0.03
