"""Engine adapters, learnt profile corrections, profile fitting and inline profiles: the
pure parts of running in front of real engines (the live llama.cpp tests are in
test_llamacpp.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import aiohttp
import openai
import pytest
import yaml

from fleetpilot.catalogue import load_catalogue
from fleetpilot.config import FleetConfig, PoolConfig
from fleetpilot.core.correction import UNCORRECTED, corrected, learn
from fleetpilot.core.model import ReplicaLoad
from fleetpilot.core.perf import predict, step_time
from fleetpilot.core.workload import TraceRequest
from fleetpilot.engines import ENGINES, detect, engine, in_flight
from fleetpilot.errors import ConfigError
from fleetpilot.gateway.appkeys import FLEET
from fleetpilot.profiling import Measured, admitted, decode_step, fit_prefill_rate, profile_yaml
from fleetpilot.sim.request_level import simulate

from conftest import Emulators, fleet, metric, serve_gateway

CAT = load_catalogue()
MODEL = "llama-3.1-8b"
A10G = CAT.profile(MODEL, "A10G")


# -- adapters -----------------------------------------------------------------------------------
def test_each_engine_is_told_apart_by_its_models_owner_or_its_metric_names() -> None:
    def owned(by: str) -> dict[str, object]:
        return {"object": "list", "data": [{"id": "m", "owned_by": by}]}

    assert detect(owned("vllm"), None) == "vllm"
    assert detect(owned("llamacpp"), None) == "llama.cpp"
    assert detect(owned("fleetpilot-emulator"), "vllm:num_requests_running 0\n") == "emulator"
    assert detect(owned("someone"), "# HELP x\nsglang:num_running_reqs 2\n") == "sglang"
    assert detect(None, "tgi_queue_size 1\ntgi_batch_current_size 3\n") == "tgi"
    assert detect(owned("someone"), "process_cpu_seconds_total 1\n") is None
    assert detect("not json at all", None) is None
    assert engine("auto").name == "vllm"  # the default until detected


def test_in_flight_reads_each_engines_own_metric_names() -> None:
    llama = (
        "# HELP llamacpp:requests_processing Number of requests processing.\n"
        "# TYPE llamacpp:requests_processing gauge\n"
        "llamacpp:requests_processing 3\n"
        "llamacpp:requests_deferred 2\n"
        "llamacpp:prompt_tokens_total 999\n"
    )
    vllm = (
        'vllm:num_requests_running{model_name="m"} 4.0\n'
        'vllm:num_requests_waiting{model_name="m"} 1.0\n'
    )
    assert in_flight(llama, ENGINES["llama.cpp"]) == 5
    assert in_flight(llama) == 5  # the kind read off the names
    assert in_flight(llama, ENGINES["vllm"]) == 0  # the old reader's blindness
    assert in_flight(vllm) == 5
    assert in_flight("tgi_queue_size 2\ntgi_batch_current_size 6\n") == 8


def test_llamacpp_reports_its_running_token_count_on_each_chunk() -> None:
    kind = ENGINES["llama.cpp"]
    chunk = b'{"choices":[{"delta":{"content":" hi"}}],"timings":{"prompt_n":3,"predicted_n": 17}}'
    assert kind.tokens_so_far(chunk) == 17
    assert kind.tokens_so_far(b'{"choices":[]}') is None
    assert ENGINES["vllm"].tokens_so_far(chunk) is None  # one token a chunk: not read
    assert kind.stream_fields == {"timings_per_token": True}
    assert ENGINES["tgi"].continue_chat is None


def test_a_pool_names_a_known_engine_or_auto() -> None:
    PoolConfig(name="p", model="m", accelerator="A10G", engine="llama.cpp")
    with pytest.raises(ValueError, match="unknown engine"):
        PoolConfig(name="p", model="m", accelerator="A10G", engine="ollama-ish")


# -- corrections --------------------------------------------------------------------------------
def test_a_profile_wrong_by_2x_is_learnt_within_a_few_dozen_requests() -> None:
    truth = corrected(A10G, replace(UNCORRECTED, prefill=2.0, step=2.0))
    c = UNCORRECTED
    load = ReplicaLoad(running=3)
    for n in range(1, 41):
        believed = corrected(A10G, c)
        p = predict(believed, load, 500, 100)
        real = predict(truth, load, 500, 100)
        per_token = (p.e2e - p.ttft) / 99
        c = learn(c, ttft=(real.ttft, p.ttft), per_token=(step_time(truth, p.batch), per_token))
        if n == 20:
            at_20 = c
    assert math.isclose(at_20.step, 2.0, rel_tol=0.05)
    assert math.isclose(c.step, 2.0, rel_tol=0.01)
    assert math.isclose(c.prefill, 2.0, rel_tol=0.03)
    assert c.samples == 40


def test_a_correction_is_bounded_and_ignores_nonsense_timings() -> None:
    c = UNCORRECTED
    for _ in range(200):
        c = learn(c, ttft=(1e6, 1e-3))
    assert c.prefill == 50.0  # the limit
    assert learn(c, ttft=(0.0, 1.0)).prefill == c.prefill
    assert learn(c, per_token=(1.0, 0.0)).step == c.step
    assert corrected(A10G, UNCORRECTED) is A10G


def test_the_simulator_learns_a_wrong_profile_the_same_way() -> None:
    """A pool whose replicas really run at a third of the catalogue's speed: told nothing, the
    router packs them and misses; learning from their timings, it holds the target."""
    slow = corrected(A10G, replace(UNCORRECTED, prefill=3.0, step=3.0))
    pool = replace(CAT.pools(MODEL, ["A10G"])[0], target=4)
    assert pool.offering.capacity_class.value == "on_demand"
    trace = [TraceRequest(arrival=i * 0.25, prompt_tokens=400, max_tokens=60) for i in range(800)]

    def run(learning: bool) -> float:
        res = simulate(
            trace, [pool], executed={pool.name: slow}, learn_profiles=learning, ttft_slo_s=1.0
        )
        share = res.slo_attainment()
        assert share is not None
        return share

    blind, learnt = run(False), run(True)
    assert learnt > blind + 0.05, (blind, learnt)


# -- profiling ----------------------------------------------------------------------------------
def test_prefill_rate_is_fitted_through_the_origin_after_one_step() -> None:
    step = 0.006
    points = [(n, step + n / 265.0) for n in (64, 128, 512, 1024)]
    assert math.isclose(fit_prefill_rate(points, step), 265.0, rel_tol=1e-9)
    noisy = [(n, t * (1.05 if i % 2 else 0.95)) for i, (n, t) in enumerate(points)]
    assert 240 < fit_prefill_rate(noisy, step) < 290
    with pytest.raises(ValueError):
        fit_prefill_rate([], step)


def test_streams_that_waited_for_a_slot_are_not_counted_as_admitted() -> None:
    assert admitted([0.1, 0.3, 0.5, 0.7], [1.0, 1.2, 1.4, 1.6]) == 4  # prefills in turn
    assert admitted([0.1, 0.1, 1.02, 1.05], [1.0, 1.0, 2.0, 2.0]) == 2  # two waited


def test_a_measured_profile_round_trips_into_the_catalogue_and_a_fleet_file() -> None:
    m = Measured(
        model="smollm2",
        accelerator="cpu-1t",
        url="http://127.0.0.1:1",
        engine="llama.cpp",
        version="b1",
        prefill_rate=265.0,
        steps=[(1, 0.006), (2, 0.015), (4, 0.027)],
        max_batch=4,
        context_tokens=2048,
        when="2026-12-01T00:00Z",
    )
    text = profile_yaml(m)
    spec = yaml.safe_load(text)["profiles"]["smollm2"]["cpu-1t"]
    assert spec["measured"]["engine"] == "llama.cpp"
    cfg = FleetConfig.model_validate({
        "pools": [{
            "name": "cpu", "model": "smollm2", "accelerator": "cpu-1t", "price_per_hour": 0.05,
            "replicas": ["http://127.0.0.1:9"], "profile": spec, "engine": "llama.cpp",
        }]
    })  # fmt: skip
    pools, replicas = cfg.build(CAT)
    profile = pools[0].profile
    assert profile is not None
    assert profile.prefill_rate == 265.0 and profile.max_batch == 4
    assert profile.step_table[2] == 0.015 and profile.context_tokens == 2048
    assert pools[0].offering.price_per_hour == 0.05
    assert replicas[0].engine == "llama.cpp"
    with pytest.raises(ValueError, match="needs price_per_hour"):
        PoolConfig(name="p", model="m", accelerator="cpu", profile=spec)
    bad = {**spec, "step_points": [[2, 0.01], [1, 0.02]]}
    cfg = FleetConfig.model_validate({
        "pools": [{"name": "p", "model": "m", "accelerator": "cpu", "price_per_hour": 1,
                   "profile": bad}]
    })  # fmt: skip
    with pytest.raises(ConfigError, match="batches must increase"):
        cfg.build(CAT)


# -- live, on emulators -------------------------------------------------------------------------
async def test_the_gateway_learns_which_replica_is_slower_than_its_profile(
    emulators: Emulators,
) -> None:
    """Two replicas of one pool, one a straggler taking 3x its profile's step time: its
    step correction climbs towards 3, its twin's stays near 1, and both are exported."""
    fast = emulators.start("A10G", time_scale=0.2)
    slow = emulators.start("A10G", time_scale=0.2, args=("--fault", "slow", "--slowdown", "3"))
    cfg = fleet(
        [{"name": "p", "model": MODEL, "accelerator": "A10G", "replicas": [fast.url, slow.url]}],
        time_scale=0.2,
        router="round_robin",  # both get streams whatever they are believed to be
    )
    async with serve_gateway(cfg) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        for _ in range(30):
            stream = await client.completions.create(
                model=MODEL, prompt="hello", max_tokens=12, stream=True
            )
            async for _chunk in stream:
                pass
        await client.close()
        corrections = gw.app[FLEET].corrections()
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
            text = await r.text()
    assert corrections["p/1"].step > 2.0, corrections
    assert 0.6 < corrections["p/0"].step < 1.5, corrections
    exported = metric(text, "fleetpilot_replica_correction", replica="p/1", kind="step")
    assert exported == pytest.approx(corrections["p/1"].step)


def test_decode_step_counts_only_the_window_where_every_stream_decodes() -> None:
    # stream 1 starts at 0 and, while stream 2 prefills (0 to 1 s), gets a token every 0.1 s;
    # after that both get one every 0.02 s
    one = [(0.1 * k, k) for k in range(1, 11)] + [(1.0 + 0.02 * k, 10 + k) for k in range(1, 51)]
    two = [(1.0 + 0.02 * k, k) for k in range(1, 61)]
    assert math.isclose(decode_step([one, two]), 0.02, rel_tol=1e-6)
    lone = [(0.0, 1), (0.5, 11)]
    assert math.isclose(decode_step([lone]), 0.05)
