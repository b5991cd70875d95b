"""Trace loaders on slices of the real public files, and the rate-series maths they feed.

The public traces live in ../shared/data (or ``$FLEETPILOT_DATA``); without them the tests that
read them skip, except under CI (``$CI`` set), where a missing data folder fails.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from itertools import pairwise
from pathlib import Path

import pytest

from fleetpilot.core.series import (
    RateSeries,
    SpotMarket,
    scale_trace,
    spot_market_from_rate,
    synthesise,
    windows_of,
)
from fleetpilot.core.workload import TraceRequest, synthetic_trace
from fleetpilot.errors import ConfigError
from fleetpilot.traces import (
    load_azure,
    load_burstgpt,
    load_minute_counts,
    load_mooncake,
    load_servegen,
    load_spot_market,
    load_trace,
    trace_format,
)

AZURE = "azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv"
MOONCAKE = "mooncake-traces/conversation_trace.jsonl"
M_LARGE = "alibaba-servegen/language/m-large"
MAF = "spothedge-traces/workloads/maf1/cleaned.csv"
SPOT_1 = "skypilot-spot-traces/preemption/1-node/aws-04-22-2023/us-west-2b_v100_1.json"
SPOT_16 = "skypilot-spot-traces/availability/16-node/aws-08-27-2023/us-east-2b_v100_1.json"
SPOT_AWS3 = "spothedge-traces/data/AWS3/us-east-1a_v100_1.json"


@pytest.fixture(scope="session")
def data() -> Path:
    env = os.environ.get("FLEETPILOT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not root.is_dir():
        message = f"public trace data not found at {root} (set FLEETPILOT_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


def _series(rps: list[float], cv: list[float], window_s: float = 600.0) -> RateSeries:
    n = len(rps)
    return RateSeries(window_s, tuple(rps), (800.0,) * n, (150.0,) * n, tuple(cv))


def _gaps_cv(trace: tuple[TraceRequest, ...]) -> float:
    gaps = [b.arrival - a.arrival for a, b in pairwise(trace)]
    return statistics.pstdev(gaps) / statistics.fmean(gaps)


# --- request logs ---------------------------------------------------------------------------


def test_azure_first_rows_match_the_file(data: Path) -> None:
    trace = load_azure(data / AZURE, limit=5)
    # 18:15:46.6805900, 18:15:50.9951690, 18:15:51.2224670, 18:15:51.3910170, 18:15:52.5732450
    assert [r.arrival for r in trace] == pytest.approx(
        [0.0, 4.314579, 4.541877, 4.710427, 5.892655], abs=1e-9
    )
    assert [(r.prompt_tokens, r.max_tokens) for r in trace] == [
        (374, 44), (396, 109), (879, 55), (91, 16), (91, 16),
    ]  # fmt: skip


def test_azure_whole_conversation_trace(data: Path) -> None:
    trace = load_azure(data / AZURE)
    assert len(trace) == 19_366  # as SOURCE.txt counts
    assert 3450 < trace[-1].arrival < 3510  # 18:15:46 -> 19:14:08
    assert statistics.median(r.prompt_tokens for r in trace) == 1020
    assert statistics.median(r.max_tokens for r in trace) == 129


def test_azure_time_range_is_rebased_and_limited(data: Path) -> None:
    whole = load_azure(data / AZURE, end_s=180.0)
    part = load_azure(data / AZURE, start_s=60.0, end_s=120.0)
    expected = [r for r in whole if 60.0 <= r.arrival < 120.0]
    assert len(part) == len(expected) > 0
    assert [r.arrival for r in part] == pytest.approx([r.arrival - 60.0 for r in expected])
    assert load_azure(data / AZURE, start_s=60.0, limit=3) == part[:3]


def test_mooncake_first_rows_match_the_file(data: Path) -> None:
    trace = load_mooncake(data / MOONCAKE, limit=13)
    assert [(r.prompt_tokens, r.max_tokens) for r in trace[:5]] == [
        (6758, 500), (7322, 490), (7236, 794), (2290, 316), (6760, 3),
    ]  # fmt: skip
    assert all(r.arrival == 0.0 for r in trace[:10])
    assert [(r.arrival, r.prompt_tokens, r.max_tokens) for r in trace[10:13]] == [
        (3.0, 13544, 71), (3.0, 87169, 402), (3.0, 6324, 548),
    ]  # fmt: skip  # "timestamp": 3000 ms


def test_mooncake_whole_trace(data: Path) -> None:
    trace = load_mooncake(data / MOONCAKE)
    assert len(trace) == 12_031
    assert trace[-1].arrival == pytest.approx(3536.999)


BURSTGPT = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,ChatGPT,1087,230,1317,Conversation log\n"
    "118,GPT-4,417,276,693,Conversation log\n"
    "120,GPT-4,300,0,300,API log\n"
    "130.5,ChatGPT,0,20,20,API log\n"
)


def test_burstgpt(tmp_path: Path) -> None:
    path = tmp_path / "BurstGPT_1.csv"
    path.write_text(BURSTGPT)
    trace = load_burstgpt(path)
    assert [(r.arrival, r.prompt_tokens, r.max_tokens) for r in trace] == [
        (0.0, 472, 18), (40.0, 1087, 230), (113.0, 417, 276), (125.5, 1, 20),
    ]  # fmt: skip  # the failed row (0 response tokens) is left out; 0 prompt tokens -> 1
    assert len(load_burstgpt(path, include_failed=True)) == 5
    gpt4 = load_burstgpt(path, model="GPT-4", include_failed=True)
    assert [r.arrival for r in gpt4] == [113.0, 115.0]  # still relative to the first row
    assert [r.arrival for r in load_burstgpt(path, log_type="API log")] == [125.5]
    assert load_trace(path) == trace


def test_burstgpt_with_session_columns(tmp_path: Path) -> None:
    path = tmp_path / "BurstGPT_3.csv"
    path.write_text(
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,"
        "Total tokens,Log Type\n"
        "1.5,abc,0.3,ChatGPT,10,20,30,Conversation log\n"
        "2.5,abc,0.4,ChatGPT,11,21,32,Conversation log\n"
    )
    assert [(r.arrival, r.prompt_tokens) for r in load_burstgpt(path)] == [(0.0, 10), (1.0, 11)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("TIMESTAMP,ContextTokens\n", "header lacks GeneratedTokens"),
        ("", "empty file"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,12,x\n",
            ":2: GeneratedTokens must be a whole number",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 18:15:46.68,12,3\n16/11/2023,1,1\n",
            ":3: TIMESTAMP must look like",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:40.00,1,1\n",
            ":3: rows are not in time order",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,-4,3\n",
            ":2: ContextTokens must be a whole number >= 0",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,4\n", ":2: expected"),
    ],
)
def test_azure_bad_input(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message) as err:
        load_azure(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1,\n', ":2: not"),
        ('{"timestamp": 0, "input_length": 5}\n', ":1: 'output_length' must be a number"),
        ('{"timestamp": 0, "input_length": 5.5, "output_length": 1}\n', ":1: 'input_length'"),
        ("[1, 2, 3]\n", ":1: expected a JSON object"),
    ],
)
def test_mooncake_bad_input(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_mooncake(path)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such trace file"):
        load_azure(tmp_path / "absent.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n\xff\xfe,1,1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_azure(path)
    with pytest.raises(ConfigError, match="limit"):
        load_azure(path, limit=-1)


# --- rate series ----------------------------------------------------------------------------


def test_servegen_m_large_matches_the_aggregate_file(data: Path) -> None:
    series = load_servegen(data / M_LARGE)
    assert (series.window_s, len(series), series.start_s) == (600.0, 2016, 0.0)
    assert series.duration_s == 14 * 86400
    aggregate = (data / M_LARGE / "_aggregate_rate.csv").read_text().splitlines()[1:]
    rates = [float(line.split(",")[1]) for line in aggregate]
    assert rates[0] == 212.78
    assert series.rps == pytest.approx(rates, abs=1e-5)
    assert 190 < statistics.fmean(series.rps) < 200  # SOURCE.txt: mean 196 req/s
    assert all(cv >= 1.0 for cv in series.cv)  # every client is at least as bursty as Poisson
    # Language datasets are not in the public snapshot: lengths are the defaults.
    assert set(series.mean_prompt_tokens) == {1155.0}


def test_servegen_lengths_from_datasets(data: Path) -> None:
    series = load_servegen(data / "alibaba-servegen/reason/deepseek-r1")
    assert len(series) == 144
    assert all(100 < p < 10_000 for p in series.mean_prompt_tokens)
    assert statistics.fmean(series.mean_output_tokens) > 500  # reasoning outputs run long


def test_servegen_combines_clients(tmp_path: Path) -> None:
    (tmp_path / "chunk-0-trace.csv").write_text(
        "0,1.0,2.0,Gamma,0.25,4\n600,0,0,,0,0\n1200,2.0,1.0,Gamma,1,0.5\n"
    )
    (tmp_path / "chunk-1-trace.csv").write_text(
        "0,3.0,1.0,Gamma,1,0.33\n600,0,0,,0,0\n1200,0,0,,0,0\n"
    )
    dataset = {
        "0": {"input_tokens": "{100: 0.5, 300: 0.5}", "output_tokens": "{10: 1.0}"},
        "1200": {"input_tokens": "{}", "output_tokens": "{}"},
    }
    (tmp_path / "chunk-1-dataset.json").write_text(json.dumps(dataset))
    series = load_servegen(tmp_path, mean_prompt_tokens=50.0, mean_output_tokens=5.0)
    assert series.rps == (4.0, 0.0, 2.0)
    assert series.cv == pytest.approx((math.sqrt((1 * 4 + 3 * 1) / 4), 1.0, 1.0))
    # Only client 1 has lengths: its means (200, 10) stand for window 0.
    assert series.mean_prompt_tokens == (200.0, 50.0, 50.0)
    assert series.mean_output_tokens == (10.0, 5.0, 5.0)
    assert load_trace(tmp_path) == load_servegen(tmp_path)


def test_servegen_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no chunk-<client>-trace\.csv"):
        load_servegen(tmp_path)
    (tmp_path / "chunk-0-trace.csv").write_text("0,1.0,2.0,Gamma,0.25,4\n600,fast,1,,0,0\n")
    with pytest.raises(ConfigError, match=r"chunk-0-trace.csv:2: rate must be a number"):
        load_servegen(tmp_path)
    (tmp_path / "chunk-0-trace.csv").write_text("0,1.0,2.0,Gamma,0.25,4\n1000,1,1,,0,0\n")
    (tmp_path / "chunk-1-trace.csv").write_text("0,1.0,2.0,Gamma,0.25,4\n600,1,1,,0,0\n")
    with pytest.raises(ConfigError, match="600 is not on the 400-s grid"):
        load_servegen(tmp_path)
    (tmp_path / "chunk-1-trace.csv").unlink()
    (tmp_path / "chunk-0-dataset.json").write_text('{"0": {"input_tokens": "oops"}}')
    with pytest.raises(ConfigError, match="window 0, input_tokens: expected a distribution"):
        load_servegen(tmp_path)


def test_minute_counts_first_rows_match_the_file(data: Path) -> None:
    series = load_minute_counts(data / MAF)
    assert (series.window_s, len(series), series.start_s) == (60.0, 48_405, 0.0)
    assert [r * 60 for r in series.rps[:4]] == pytest.approx([4033, 1980, 943, 200])
    assert set(series.cv) == {1.0}
    assert load_trace("maf1", data_dir=data) == series


def test_minute_counts_fill_gaps_and_reject_disorder(tmp_path: Path) -> None:
    path = tmp_path / "counts.csv"
    path.write_text('"Time (min)","Requests"\n10,60\n12,120\n')
    series = load_minute_counts(path)
    assert (series.start_s, series.rps) == (600.0, (1.0, 0.0, 2.0))
    path.write_text('"Time (min)","Requests"\n10,60\n9,120\n')
    with pytest.raises(ConfigError, match=r"counts.csv:3: minute 9 comes after minute 10"):
        load_minute_counts(path)


# --- spot markets ---------------------------------------------------------------------------


def test_spot_preemption_trace(data: Path) -> None:
    market = load_spot_market(data / SPOT_1)
    raw = json.loads((data / SPOT_1).read_text())["data"]
    assert (market.gap_s, len(market)) == (32.0, 19_961)
    assert market.capacity[:5] == (0, 1, 1, 1, 1)
    drops = [i for i in range(1, len(raw)) if raw[i] < raw[i - 1]]
    assert market.preemptions() == tuple(32.0 * i for i in drops)
    assert market.available_at(0.0) == 0 and market.available_at(40.0) == 1


def test_spot_multi_node_and_gap_override(data: Path) -> None:
    market = load_spot_market(data / SPOT_16)
    assert max(market.capacity) == 16 and market.gap_s == 300.0
    raw = json.loads((data / SPOT_16).read_text())["data"]
    lost = sum(max(a - b, 0) for a, b in pairwise(raw))
    assert len(market.preemptions()) == lost
    assert load_spot_market(data / SPOT_AWS3, gap_s=195.0).duration_s == 20_158 * 195.0


def test_spot_market_values() -> None:
    market = SpotMarket(10.0, (4, 4, 2, 3, 0))
    assert market.preemptions() == (20.0, 20.0, 40.0, 40.0, 40.0)
    assert [market.available_at(t) for t in (-5, 0, 19.9, 25, 35, 1000)] == [4, 4, 4, 2, 3, 0]
    assert market.scaled(time=0.5).preemptions() == (10.0, 10.0, 20.0, 20.0, 20.0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"data": [1, 0]}', "expected"),
        ('{"metadata": {"gap_seconds": "5"}, "data": [1]}', "gap_seconds must be a number"),
        ('{"metadata": {"gap_seconds": 0}, "data": [1]}', "must be positive"),
        ('{"metadata": {"gap_seconds": 5}, "data": [1, -1]}', r"data\[1\] must be a whole"),
        ('{"metadata": {"gap_seconds": 5},\n "data": [1, ]}', ":2: not JSON"),
    ],
)
def test_spot_bad_input(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "spot.json"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_spot_market(path)


def test_poisson_preemptions_are_deterministic() -> None:
    a = spot_market_from_rate(0.5, 400 * 3600.0, seed=7)
    assert a == spot_market_from_rate(0.5, 400 * 3600.0, seed=7)
    assert a != spot_market_from_rate(0.5, 400 * 3600.0, seed=8)
    assert abs(len(a) - 200) < 4 * math.sqrt(200)
    assert list(a) == sorted(a) and a[0] >= 120.0 and a[-1] < 400 * 3600.0
    assert spot_market_from_rate(0.0, 3600.0, seed=1) == ()


# --- dispatch -------------------------------------------------------------------------------


def test_load_trace_by_name_and_by_content(data: Path, tmp_path: Path) -> None:
    assert load_trace("azure-conv", data_dir=data, limit=5) == load_azure(data / AZURE, limit=5)
    moon = load_trace(data / MOONCAKE, limit=3)
    assert moon == load_mooncake(data / MOONCAKE, limit=3)
    day = load_trace("servegen-m-large", data_dir=data, start_s=86400.0, end_s=2 * 86400.0)
    assert isinstance(day, RateSeries) and (day.start_s, len(day)) == (86400.0, 144)
    assert trace_format(data / M_LARGE / "_aggregate_rate.csv") == "servegen"
    aggregate = load_trace(data / M_LARGE / "_aggregate_rate.csv")
    assert isinstance(aggregate, RateSeries) and aggregate.rps[0] == 212.78
    with pytest.raises(ConfigError, match="spot-market trace"):
        load_trace(data / SPOT_1)
    odd = tmp_path / "odd.csv"
    odd.write_text("when,what\n1,2\n")
    with pytest.raises(ConfigError, match="unknown trace format"):
        load_trace(odd)
    with pytest.raises(ConfigError, match="nor a trace name"):
        load_trace("no-such-trace")


def test_named_trace_needs_a_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETPILOT_DATA", raising=False)
    with pytest.raises(ConfigError, match="FLEETPILOT_DATA"):
        load_trace("azure-conv")


# --- the series maths -----------------------------------------------------------------------


def test_rate_series_helpers() -> None:
    s = RateSeries(60.0, (1.0, 2.0, 0.0, 4.0), (100.0,) * 4, (10.0,) * 4, (1.0,) * 4, 120.0)
    assert (s.duration_s, s.end_s, s.total_requests) == (240.0, 360.0, 420.0)
    assert [s.rps_at(t) for t in (0, 125, 190, 359, 360)] == [0.0, 1.0, 2.0, 4.0, 0.0]
    fast = s.scaled(time=0.5)
    assert (fast.window_s, fast.rps, fast.start_s) == (30.0, (2.0, 4.0, 0.0, 8.0), 60.0)
    assert fast.total_requests == s.total_requests
    assert s.scaled(rate=3.0).total_requests == 3 * s.total_requests
    part = s.slice(190.0, 250.0)  # overlaps windows [180, 240) and [240, 300)
    assert (part.start_s, part.rps) == (180.0, (2.0, 0.0))
    assert s.slice(300.0).rps == (4.0,) and s.slice(1000.0).rps == ()
    with pytest.raises(ValueError, match="differ in length"):
        RateSeries(60.0, (1.0,), (), (), ())
    with pytest.raises(ValueError, match="not negative"):
        RateSeries(60.0, (-1.0,), (1.0,), (1.0,), (1.0,))


def test_windows_of_exact() -> None:
    trace = tuple(
        TraceRequest(t, p, o)
        for t, p, o in [(0.0, 10, 1), (1.0, 20, 3), (3.0, 30, 5), (12.0, 40, 7)]
    )
    s = windows_of(trace, 10.0)
    assert (len(s), s.rps) == (2, (0.3, 0.1))
    assert s.mean_prompt_tokens == (20.0, 40.0) and s.mean_output_tokens == (3.0, 7.0)
    assert s.cv[0] == pytest.approx(statistics.pstdev([1.0, 2.0]) / 1.5) and s.cv[1] == 1.0
    padded = windows_of(trace, 10.0, duration_s=40.0)
    assert padded.rps == (0.3, 0.1, 0.0, 0.0)
    assert padded.mean_prompt_tokens[3] == 25.0  # empty windows: the trace's overall mean


def test_synthesise_is_deterministic_per_seed() -> None:
    s = _series([2.0, 5.0, 0.0, 3.0], [1.0, 3.0, 1.0, 0.5], window_s=60.0)
    a = synthesise(s, seed=1)
    assert a == synthesise(s, seed=1)
    assert a != synthesise(s, seed=2)
    wider = synthesise(s, seed=1, prompt_sigma=2.0)
    assert [r.arrival for r in wider] == [r.arrival for r in a]
    assert all(r.prompt_tokens >= 1 and r.max_tokens >= 1 for r in a)
    assert not any(120.0 <= r.arrival < 180.0 for r in a)  # a window of rate 0 stays empty


def test_synthesise_follows_window_rates() -> None:
    rates = [2.0, 8.0, 0.5, 4.0]
    s = _series(rates, [1.0] * 4)
    trace = synthesise(s, seed=3)
    back = windows_of(trace, 600.0, duration_s=s.duration_s)
    for want, got, cv in zip(rates, back.rps, back.cv, strict=True):
        expected = want * 600
        assert abs(got * 600 - expected) < 4 * math.sqrt(expected)  # Poisson count, 4 sd
        assert cv == pytest.approx(1.0, abs=0.2)
    # Lognormal lengths around the window mean (sigma 0.99: sd of a mean of n ~ 1.3 m/sqrt(n)).
    assert back.mean_prompt_tokens[1] == pytest.approx(800.0, rel=0.1)
    assert back.mean_output_tokens[1] == pytest.approx(150.0, rel=0.1)


def test_synthesise_cv_orders_burstiness() -> None:
    calm = synthesise(_series([5.0] * 6, [1.0] * 6), seed=4)
    bursty = synthesise(_series([5.0] * 6, [3.0] * 6), seed=4)
    assert _gaps_cv(calm) == pytest.approx(1.0, abs=0.1)
    assert 2.4 < _gaps_cv(bursty) < 3.6
    assert _gaps_cv(bursty) > 2 * _gaps_cv(calm)
    # Counts per 10 s vary more, while the mean rate holds (gamma renewal: count var ~ cv² n).
    expected = 5.0 * 3600
    assert abs(len(bursty) - expected) < 4 * 3.0 * math.sqrt(expected)

    def dispersion(trace: tuple[TraceRequest, ...]) -> float:
        counts = windows_of(trace, 10.0, duration_s=3600.0).rps
        return statistics.pvariance(counts) / statistics.fmean(counts) * 10.0

    assert dispersion(bursty) > 4 * dispersion(calm)


def test_windows_of_synthesise_round_trip() -> None:
    s = RateSeries(
        300.0, (3.0, 6.0, 1.0, 4.0), (500.0, 1000.0, 200.0, 800.0), (50.0, 300.0, 20.0, 80.0),
        (1.0, 2.0, 1.0, 0.5),
    )  # fmt: skip
    back = windows_of(synthesise(s, seed=9), 300.0, duration_s=s.duration_s)
    for i in range(len(s)):
        n = s.rps[i] * s.window_s
        assert back.rps[i] * s.window_s == pytest.approx(n, abs=4 * s.cv[i] * math.sqrt(n) + 2)
        assert back.mean_prompt_tokens[i] == pytest.approx(s.mean_prompt_tokens[i], rel=0.3)
        assert back.mean_output_tokens[i] == pytest.approx(s.mean_output_tokens[i], rel=0.3)
    assert back.cv[1] > back.cv[0] > back.cv[3]


def test_scale_trace_time_and_rate() -> None:
    trace = synthetic_trace(600.0, 5.0, seed=2)
    fast = scale_trace(trace, time=0.5)
    assert [r.arrival for r in fast] == [r.arrival * 0.5 for r in trace]
    assert [r.prompt_tokens for r in fast] == [r.prompt_tokens for r in trace]

    half = scale_trace(trace, rate=0.5, seed=1)
    assert set(half) <= set(trace)  # a subsample, unshifted
    assert abs(len(half) - len(trace) / 2) < 4 * math.sqrt(len(trace) / 4)
    assert half == scale_trace(trace, rate=0.5, seed=1)
    assert half != scale_trace(trace, rate=0.5, seed=2)

    double = scale_trace(trace, rate=2.0, seed=1)
    assert len(double) == 2 * len(trace)
    assert set(trace) <= set(double)  # the original is one of the copies
    arrivals = [r.arrival for r in double]
    assert arrivals == sorted(arrivals) and max(arrivals) <= max(r.arrival for r in trace)
    assert sorted(r.prompt_tokens for r in double) == sorted([r.prompt_tokens for r in trace] * 2)
    more = scale_trace(trace, rate=2.5, seed=1, time=2.0)
    assert abs(len(more) - 2.5 * len(trace)) < 4 * math.sqrt(len(trace) / 4)
    assert max(r.arrival for r in more) <= 2 * max(r.arrival for r in trace)
    assert scale_trace(trace, rate=0.0) == ()
    with pytest.raises(ValueError, match="time scale"):
        scale_trace(trace, time=0.0)
