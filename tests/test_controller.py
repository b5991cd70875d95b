"""The live controller over real emulator processes and an in-process gateway, on 127.0.0.1.

Time runs 20x fast (``time_scale`` 0.05): modelled seconds are what the controller, the
gateway and the emulators agree on; a start-up delay of 40 modelled seconds takes 2 real ones.
The capacity policy here is a small deterministic one (replicas = ceil(rps / capacity)), so
the tests check the controller and the actuator, not a planner.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from fleetpilot.catalogue import load_catalogue
from fleetpilot.clock import ManualClock, SystemClock
from fleetpilot.controller import (
    Controller,
    DryRunActuator,
    FleetMembership,
    FleetObserver,
    HttpMembership,
    InProcessLease,
    LeaseTable,
    LocalActuator,
    MetricsObserver,
    RedisLease,
    SpotPlay,
    StoreLease,
    capacity_policy,
)
from fleetpilot.controller.observe import DemandEstimator, GatewayCounters
from fleetpilot.core.capacity import Plan, PlanParams
from fleetpilot.core.model import CapacityClass, Demand, Pool, Replica, ReplicaState, Snapshot
from fleetpilot.core.policies import CAPACITY_POLICIES
from fleetpilot.errors import ConfigError
from fleetpilot.gateway.fleet import LiveFleet
from fleetpilot.gateway.server import FLEET, METRICS, create_app
from fleetpilot.store.sqlite import SqliteStore

from conftest import HOST, fleet, metric

MODEL = "llama-3.1-8b"
SCALE = 0.05  # real seconds per modelled second

pytestmark = pytest.mark.timeout(90)


def a10g_pool(cls: CapacityClass, startup_s: float = 40.0) -> Pool:
    (pool,) = load_catalogue().pools(MODEL, ["A10G"], (cls,))
    return replace(pool, offering=replace(pool.offering, startup_s=startup_s))


def sized(pool: str, per_replica_rps: float, most: int = 1000) -> Callable[..., tuple[Plan, Any]]:
    """replicas = ceil(rps / per_replica_rps), at least ``min_replicas``, at most ``most``."""

    def policy(snapshot: Snapshot, state: Any, params: PlanParams) -> tuple[Plan, Any]:
        rps = snapshot.demand.get(MODEL, Demand()).rps
        n = max(params.min_replicas, math.ceil(rps / per_replica_rps - 1e-9))
        n = min(n, most)
        return Plan({pool: n}, note=f"{rps:.3f} rps"), state

    return policy


class FixedDemand:
    """An observer the test drives directly."""

    def __init__(self, rps: float = 0.0) -> None:
        self.rps = rps

    async def demand(self) -> dict[str, Demand]:
        return {MODEL: Demand(self.rps)}


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Result:
    status: int
    tokens: int
    replica: str


async def chat(
    session: aiohttp.ClientSession, base: str, max_tokens: int, *, model: str = MODEL
) -> Result:
    """One streamed chat completion; counts the content chunks that arrived."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    async with session.post(base + "/v1/chat/completions", json=body) as resp:
        tokens = 0
        if resp.status == 200:
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        tokens += 1
        else:
            await resp.read()
        return Result(resp.status, tokens, resp.headers.get("x-fleetpilot-replica", ""))


async def steady_load(
    session: aiohttp.ClientSession, base: str, rps: float, seconds: float, max_tokens: int
) -> list[Result]:
    """Requests evenly spaced at ``rps`` (real) for ``seconds`` (an open loop: a late send
    does not delay the next), then waits for all answers."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(round(rps * seconds)):
        await asyncio.sleep(max(0.0, start + i / rps - loop.time()))
        tasks.append(asyncio.create_task(chat(session, base, max_tokens)))
    return list(await asyncio.gather(*tasks))


@dataclass
class Rig:
    clock: SystemClock
    pool: Pool
    url: str
    fleet: LiveFleet
    actuator: LocalActuator
    controller: Controller
    session: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def rig(
    pool: Pool,
    policy: Callable[..., tuple[Plan, Any]],
    *,
    observer: Any = None,
    spot: SpotPlay | None = None,
    interval_s: float = 20.0,
) -> AsyncIterator[Rig]:
    """Gateway (no static replicas) + local actuator + controller, all in this event loop."""
    clock = SystemClock(SCALE)
    config = fleet([], time_scale=SCALE)
    app = create_app(config, clock=clock)
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    url = f"http://{HOST}:{runner.addresses[0][1]}"
    live = app[FLEET]
    membership = FleetMembership(live)
    actuator = LocalActuator(clock, spot=spot, on_change=membership.sync_now)
    obs = observer or FleetObserver(live, app[METRICS], [pool], clock)
    controller = Controller(
        policy, PlanParams(min_replicas=1), actuator, obs, clock, None, interval_s,
        pools=[pool], membership=membership,
    )  # fmt: skip
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        async with actuator, controller:
            yield Rig(clock, pool, url, live, actuator, controller, session)
        assert not controller.errors, controller.errors
    finally:
        await session.close()
        await runner.cleanup()


def ready(rig: Rig) -> list[str]:
    return [r.id for r in rig.fleet.replicas if r.state is ReplicaState.READY]


def events_of(actuator: LocalActuator, rid: str) -> list[str]:
    return [what for _, r, what in actuator.events if r == rid]


# ---------------------------------------------------------------------------------------------
# The local actuator under the controller


async def test_demand_step_up_adds_replicas_and_step_down_drains_before_stopping() -> None:
    pool = a10g_pool(CapacityClass.ON_DEMAND)
    # Capacity 0.12 modelled rps (2.4 real) per replica.  8 real rps = 0.4 modelled -> 3
    # replicas (the most; anything over 0.24 is 3); 1 real rps = 0.05 -> 1 replica.  Rates are
    # counted over control intervals of just over 1 real second, so an evenly spaced 1 rps can
    # read as 2 arrivals / 1.05 s = 0.095 modelled: the margins must absorb that quantisation.
    async with rig(pool, sized(pool.name, 0.12, most=3)) as r:
        await wait_for(lambda: len(ready(r)) == 1, 20, "the first replica")
        first = ready(r)[0]

        low = await steady_load(r.session, r.url, 1.0, 2.0, 40)
        assert len(r.actuator.snapshot()) == 1

        high = await steady_load(r.session, r.url, 8.0, 4.0, 40)
        await wait_for(lambda: len(ready(r)) == 3, 20, "three ready replicas")
        assert max(s.plan.targets[pool.name] for s in r.controller.steps) == 3
        grown = set(ready(r)) - {first}
        for rid in grown:  # each new one started, then became ready
            assert events_of(r.actuator, rid)[:2] == ["start", "ready"]

        # Long requests straight to every replica: draining must wait for them.
        replicas = {m.id: m.url for m in r.actuator.snapshot()}
        done_at: dict[str, float] = {}

        async def long_request(rid: str, url: str) -> Result:
            result = await chat(r.session, url, 1500)
            done_at[rid] = r.clock.now()
            return result

        direct = {rid: asyncio.create_task(long_request(rid, url)) for rid, url in replicas.items()}
        await asyncio.sleep(0.3)
        tail = asyncio.create_task(steady_load(r.session, r.url, 1.0, 6.0, 40))
        await wait_for(lambda: len(r.actuator.snapshot()) == 1, 30, "the step down")
        finished = {rid: await t for rid, t in direct.items()}
        results = low + high + await tail

        assert all(x.status == 200 and x.tokens == 40 for x in results), results
        assert all(x.status == 200 and x.tokens == 1500 for x in finished.values())
        removed = set(replicas) - {m.id for m in r.actuator.snapshot()}
        assert len(removed) == 2
        for rid in removed:
            assert events_of(r.actuator, rid)[-2:] == ["draining", "stopped"]
        # The drained replicas stopped only after their long requests had finished.
        stopped_at = {rid: t for t, rid, what in r.actuator.events if what == "stopped"}
        drained_at = {rid: t for t, rid, what in r.actuator.events if what == "draining"}
        for rid in removed:
            assert drained_at[rid] < done_at[rid] <= stopped_at[rid]
        text = (await (await r.session.get(r.url + "/metrics")).read()).decode()
        assert metric(text, "fleetpilot_continuations_total") == 0
        assert r.fleet.find(next(iter(removed))) is None  # the gateway forgot them


async def test_preemption_notice_drains_and_plans_a_replacement_at_once() -> None:
    pool = a10g_pool(CapacityClass.SPOT)
    # The only replica gets its notice at modelled t=100 (5 s real) and is pre-empted 160
    # modelled seconds (8 s real) later; its replacement needs about 3 s to become ready.
    spot = SpotPlay(notice_s=160.0, times={pool.name: [260.0]})
    demand = FixedDemand(0.0)
    async with rig(pool, sized(pool.name, 1.0), observer=demand, spot=spot, interval_s=1e4) as r:
        await wait_for(lambda: len(ready(r)) == 1, 20, "the first replica")
        victim = ready(r)[0]
        # A long stream that will still be running when the victim is killed.
        stream = asyncio.create_task(chat(r.session, r.url, 8000))  # >= 14 s real
        await wait_for(lambda: bool(r.controller.notices), 20, "the pre-emption notice")
        notice = r.controller.notices[0]
        assert notice.replica_id == victim and notice.pool == pool.name
        await wait_for(lambda: any(s.reason == "notice" for s in r.controller.steps), 5, "replan")
        # Drained at once: the gateway stops routing to it, and a replacement starts.
        assert r.fleet.get(victim).state is ReplicaState.DRAINING
        assert any(m.id != victim for m in r.actuator.snapshot())
        await wait_for(lambda: "killed" in events_of(r.actuator, victim), 20, "the kill")
        result = await stream
        assert result.status == 200 and result.tokens == 8000  # continued elsewhere
        text = (await (await r.session.get(r.url + "/metrics")).read()).decode()
        assert metric(text, "fleetpilot_continuations_total") == 1
        replacement = next(m.id for m in r.actuator.snapshot() if m.id != victim)
        kill_at = next(t for t, rid, w in r.actuator.events if rid == victim and w == "killed")
        start_at = next(t for t, rid, w in r.actuator.events if rid == replacement and w == "start")
        assert start_at < kill_at  # planned on the notice, not after the loss
        assert kill_at >= notice.deadline - 1.0
        assert r.controller.steps[0].reason == "tick"  # one tick only: the rest was the notice


async def test_local_actuator_poisson_preemptions_are_seeded() -> None:
    clock = ManualClock()
    pool = a10g_pool(CapacityClass.SPOT)
    plays = []
    for _ in range(2):
        async with LocalActuator(clock, time_scale=1.0, spot=SpotPlay(seed=3)) as act:
            plays.append(
                [act._rng.expovariate(pool.offering.interruption_rate / 3600) for _ in range(3)]
            )
    assert plays[0] == plays[1]


async def test_local_actuator_cleans_up_children_on_error() -> None:
    clock = SystemClock(SCALE)
    pool = a10g_pool(CapacityClass.ON_DEMAND, startup_s=0.0)
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        async with LocalActuator(clock) as act:
            await act.apply(Plan({pool.name: 2}), [pool])
            pids = [m.child.pid for m in act._members.values()]
            raise RuntimeError("boom")
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ---------------------------------------------------------------------------------------------
# Lease, dry run, observers, membership


async def test_in_process_lease_lets_one_of_two_controllers_act() -> None:
    clock = SystemClock()
    table = LeaseTable()
    pool = a10g_pool(CapacityClass.ON_DEMAND)
    made = []
    for name in ("a", "b"):
        act = DryRunActuator(clock, quiet=True)
        lease = InProcessLease(clock, table=table, holder=name, ttl_s=0.3)
        ctl = Controller(
            sized(pool.name, 1.0), PlanParams(), act, FixedDemand(2.5), clock, lease, 0.05,
            pools=[pool],
        )  # fmt: skip
        made.append((ctl, act))
    (a, act_a), (b, act_b) = made
    a.start()
    await asyncio.sleep(0.1)
    b.start()
    await asyncio.sleep(0.5)
    assert act_a.applied and not act_b.applied
    assert a.leading and not b.leading and table.holder() == "a"
    await a.stop()  # releases the lease: b takes over on its next tick
    await wait_for(lambda: bool(act_b.applied), 2, "the second controller to act")
    assert table.holder() == "b"
    await b.stop()
    assert act_b.applied[0].plan.targets == {pool.name: 3}


async def test_dry_run_records_and_prints_plans() -> None:
    clock = ManualClock(10.0)
    out = io.StringIO()
    act = DryRunActuator(clock, console=Console(file=out, width=100))
    pools = [a10g_pool(CapacityClass.ON_DEMAND), a10g_pool(CapacityClass.SPOT)]
    await act.apply(Plan({pools[0].name: 2, pools[1].name: 3}, note="up"), pools)
    await act.apply(Plan({pools[1].name: 1}), pools)
    assert [a.after for a in act.applied] == [
        {pools[0].name: 2, pools[1].name: 3},
        {pools[0].name: 2, pools[1].name: 1},
    ]
    assert act.applied[0].at == 10.0 and act.applied[1].before == act.applied[0].after
    text = out.getvalue()
    assert "A10G-spot" in text and "3 → 1" in text and "0 → 2" in text
    total = 2 * pools[0].offering.price_per_hour + pools[1].offering.price_per_hour
    assert f"{total:,.2f}" in text
    assert await act.replicas() == []


def test_demand_estimator_counts_arrivals_and_request_shape() -> None:
    clock = ManualClock()
    est = DemandEstimator(clock, [MODEL])
    first = est.update(GatewayCounters(in_flight={MODEL: 2}))
    assert first[MODEL].rps == 0 and first[MODEL].in_flight == 2
    clock.advance(10.0)
    c = GatewayCounters(
        finished={MODEL: 30},
        ok={MODEL: 20},
        prompt_tokens={MODEL: 2000},
        output_tokens={MODEL: 1000},
        in_flight={MODEL: 12},
    )
    d = est.update(c)[MODEL]
    assert d.rps == pytest.approx((30 + 10) / 10)
    assert (d.mean_prompt_tokens, d.mean_output_tokens, d.in_flight) == (100, 50, 12)
    clock.advance(5.0)
    d = est.update(replace(c, finished={MODEL: 5}, in_flight={MODEL: 0}))[MODEL]  # restarted
    assert d.rps == pytest.approx(0.0)
    assert d.mean_output_tokens == 50  # kept: nothing succeeded in this window


async def test_http_membership_and_metrics_observer_against_a_gateway_app() -> None:
    """The out-of-process variant: admin endpoints on the gateway, scraped demand."""
    from aiohttp import web

    clock = ManualClock()
    catalogue = load_catalogue()
    app = create_app(fleet([]), catalogue, clock, health_checks=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    url = f"http://{HOST}:{runner.addresses[0][1]}"
    pool = a10g_pool(CapacityClass.SPOT)
    assert pool.profile is not None
    reps = [
        Replica(f"{pool.name}/{i}", pool.name, MODEL, f"http://{HOST}:{9000 + i}",
                pool.offering, pool.profile, ReplicaState.STARTING)
        for i in range(2)
    ]  # fmt: skip
    try:
        members = HttpMembership(url)
        await members.sync(reps)
        live = app[FLEET]
        assert sorted(r.id for r in live.replicas) == [r.id for r in reps]
        assert all(r.state is ReplicaState.STARTING for r in live.replicas)
        offering = live.get(reps[0].id).base.offering
        assert (offering.name, offering.price_per_hour) == (
            pool.offering.name,
            pool.offering.price_per_hour,
        )
        reps = [
            replace(reps[0], state=ReplicaState.READY),
            replace(reps[1], state=ReplicaState.DRAINING),
        ]
        await members.sync(reps)
        assert [r.state for r in live.replicas] == [ReplicaState.READY, ReplicaState.DRAINING]
        await members.sync(reps[:1])
        assert [r.id for r in live.replicas] == [reps[0].id]
        # a gateway that restarted and forgot its members gets them back
        live.remove(reps[0].id)
        await members.sync(reps[:1])
        assert [r.id for r in live.replicas] == [reps[0].id]

        app[METRICS].requests.labels(MODEL, pool.name, "200").inc(8)
        app[METRICS].tokens.labels(pool.name, "prompt").inc(800)
        app[METRICS].tokens.labels(pool.name, "completion").inc(400)
        obs = MetricsObserver(url, [pool], clock)
        assert (await obs.demand())[MODEL].rps == 0
        clock.advance(4.0)
        app[METRICS].requests.labels(MODEL, pool.name, "200").inc(8)
        app[METRICS].tokens.labels(pool.name, "prompt").inc(800)
        app[METRICS].tokens.labels(pool.name, "completion").inc(400)
        d = (await obs.demand())[MODEL]
        assert d.rps == pytest.approx(2.0)
        assert (d.mean_prompt_tokens, d.mean_output_tokens) == (100, 50)
    finally:
        await runner.cleanup()


def test_capacity_policy_lookup_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown capacity policy"):
        capacity_policy("no-such-policy")


# ---------------------------------------------------------------------------------------------
# Redis lease against a real redis-server


async def test_redis_lease_one_holder_renewal_release_and_expiry(redis_url: str) -> None:
    clock = SystemClock()
    a = RedisLease.from_url(redis_url, clock, holder="a", ttl_s=0.5)
    b = RedisLease.from_url(redis_url, clock, holder="b", ttl_s=0.5)
    try:
        assert await a.acquire()
        assert not await b.acquire()
        await asyncio.sleep(0.3)
        assert await a.acquire()  # renewed: still a's after the first ttl would have ended
        await asyncio.sleep(0.3)
        assert not await b.acquire()
        await b.release()  # not b's: must not delete a's lease
        assert not await b.acquire()
        await a.release()
        assert await b.acquire()
        await asyncio.sleep(0.7)  # b stops renewing: the lease expires
        assert await a.acquire()
        assert not await b.acquire()
    finally:
        await a.close()
        await b.close()


async def test_redis_lease_under_two_controllers(redis_url: str) -> None:
    clock = SystemClock()
    pool = a10g_pool(CapacityClass.ON_DEMAND)
    acts, ctls = [], []
    for name in ("a", "b"):
        act = DryRunActuator(clock, quiet=True)
        lease = RedisLease.from_url(redis_url, clock, holder=name, ttl_s=0.5)
        ctls.append(
            Controller(
                sized(pool.name, 1.0), PlanParams(), act, FixedDemand(1.0), clock, lease, 0.05,
                pools=[pool],
            )
        )  # fmt: skip
        acts.append(act)
    try:
        ctls[0].start()
        await asyncio.sleep(0.15)
        ctls[1].start()
        await asyncio.sleep(0.4)
        assert acts[0].applied and not acts[1].applied
        await ctls[0].stop()
        await wait_for(lambda: bool(acts[1].applied), 3, "the standby to take over")
    finally:
        for c in ctls:
            await c.stop()
        for c in ctls:
            await c.lease.close()  # type: ignore[attr-defined]


async def test_a_store_lease_on_sqlite_hands_over_between_holders(tmp_path: Any) -> None:
    """The same lease rule on the one-machine store: two holders, one file."""
    clock = SystemClock()
    path = tmp_path / "lease.db"
    a = StoreLease(SqliteStore(path), clock, holder="a", ttl_s=0.3)
    b = StoreLease(SqliteStore(path), clock, holder="b", ttl_s=0.3)
    try:
        assert await a.acquire() and not await b.acquire()
        await b.release()  # not b's to give back
        assert not await b.acquire()
        await asyncio.sleep(0.4)  # a stopped renewing
        assert await b.acquire() and not await a.acquire()
    finally:
        await a.close()
        await b.close()


def two_on_demand(snapshot: Snapshot, state: Any, params: PlanParams) -> tuple[Plan, Any]:
    """A capacity policy loaded by name (``test_controller:two_on_demand``) by the service."""
    return Plan({p.name: 2 for p in snapshot.pools}), state


async def test_controller_service_wires_settings_to_a_running_loop(tmp_path: Any) -> None:
    from aiohttp import web

    from fleetpilot.controller.service import load_controller_settings, serve_controller

    seen: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    catalogue = load_catalogue()
    app = create_app(fleet([]), catalogue, SystemClock(), health_checks=False)
    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    url = f"http://{HOST}:{runner.addresses[0][1]}"
    path = tmp_path / "controller.yaml"
    path.write_text(
        f"policy: test_controller:two_on_demand\ninterval_s: 0.05\ngateway_url: {url}\n"
        "models: [llama-3.1-8b]\naccelerators: [A10G]\nclasses: [on_demand]\n"
        "actuator: dry-run\n"
    )
    settings = load_controller_settings(path)
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(serve_controller(settings, stop=stop))
        await wait_for(lambda: seen.count("/metrics") >= 3, 5, "the controller's scrapes")
        stop.set()
        await asyncio.wait_for(task, 5)
        assert "/admin/fleet" in seen  # membership synced (nothing to add from a dry run)
    finally:
        await runner.cleanup()
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway_url: http://x\nmodels: []\n")
    with pytest.raises(ConfigError, match="invalid controller settings"):
        load_controller_settings(bad)
    with pytest.raises(ConfigError, match="cannot load capacity policy"):
        capacity_policy("test_controller:nothing_here")


def test_controller_plan_knobs_reach_the_planner_and_a_misspelt_one_is_an_error(
    tmp_path: Any,
) -> None:
    from fleetpilot.controller.service import load_controller_settings

    head = "gateway_url: http://127.0.0.1:1\nmodels: [llama-3.1-8b]\n"
    good = tmp_path / "good.yaml"
    good.write_text(head + "plan: {ttft_slo_s: 1.5, knobs: {surge_min: 2, hold_s: 120}}\n")
    params = load_controller_settings(good).plan.params()
    assert params.ttft_slo_s == 1.5
    assert params.knobs == {"surge_min": 2.0, "hold_s": 120.0}
    assert params.adaptive.surge_min == 2.0 and params.adaptive.hold_s == 120.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(head + "plan: {knobs: {surge_mim: 0}}\n")
    with pytest.raises(ConfigError, match=r"unknown planner knob.*surge_mim"):
        load_controller_settings(bad)


async def test_every_shared_capacity_policy_runs_under_the_controller() -> None:
    """The controller's contract with ``core.policies`` and ``core.adaptive.adaptive``: a
    snapshot in, a Plan over its pools out."""
    names = sorted(CAPACITY_POLICIES)
    with contextlib.suppress(ConfigError):
        names.append("adaptive" if capacity_policy("adaptive") else "")
    pools = load_catalogue().pools(MODEL, ["A10G", "L4"])
    for name in names:
        clock = ManualClock()
        act = DryRunActuator(clock, quiet=True)
        ctl = Controller(
            capacity_policy(name), PlanParams(), act, FixedDemand(3.0), clock, None, 10.0,
            pools=pools,
        )  # fmt: skip
        for _ in range(3):
            assert await ctl.step() is not None
            clock.advance(10.0)
        after = act.applied[-1].after
        assert set(after) <= {p.name for p in pools}, name
        assert sum(after.values()) >= 1, name
        assert ctl.steps[-1].snapshot.demand[MODEL].rps == 3.0


async def test_the_controller_takes_its_lease_on_the_shared_store_setting(tmp_path: Any) -> None:
    from fleetpilot.controller.service import ControllerSettings, _lease

    settings = ControllerSettings.model_validate(
        {"gateway_url": "http://127.0.0.1:1", "models": ["m"],
         "store": {"url": f"sqlite://{tmp_path}/fleet.db"}}
    )  # fmt: skip
    first = _lease(settings, SystemClock())
    second = _lease(settings, SystemClock())
    try:
        assert isinstance(first, StoreLease)
        assert await first.acquire() and not await second.acquire()  # one file, one holder
    finally:
        await first.close()  # type: ignore[attr-defined]
        await second.close()  # type: ignore[attr-defined]
