"""Calibrated capacity at the SLO: the measurement, the packaged table and how plans use it."""

from __future__ import annotations

import functools

import pytest

from fleetpilot.catalogue import Catalogue, load_catalogue
from fleetpilot.core.calibration import (
    RATIO_FLOOR,
    calibrated_ratio,
    p99_rate,
    p99_ttft,
    planned_rate,
    profile_key,
)
from fleetpilot.core.calibration_data import TABLE
from fleetpilot.core.capacity import (
    KNOBS,
    PlanParams,
    check_knobs,
    replica_capacity,
    slo_capacity,
    spot_survival,
)
from fleetpilot.core.model import CapacityClass, Demand, Pool, Profile
from fleetpilot.core.series import RateSeries
from fleetpilot.sim.fluid import capacity_table

MODEL = "llama-3.1-8b"


@functools.cache
def catalogue() -> Catalogue:
    return load_catalogue()


def analytic(profile: Profile, prompt: float, output: float, ttft: float = 2.0) -> float:
    return slo_capacity(
        profile, ttft_slo_s=ttft, itl_slo_s=0.2, mean_prompt_tokens=prompt,
        mean_output_tokens=output,
    ).requests_per_s  # fmt: skip


def test_p99_ttft_is_deterministic_and_grows_with_load() -> None:
    profile = catalogue().profile(MODEL, "L40S")
    cap = analytic(profile, 512, 128)
    p99 = [
        p99_ttft(profile, f * cap, mean_prompt_tokens=512, mean_output_tokens=128, requests=800)
        for f in (0.2, 0.6, 1.2)
    ]
    again = p99_ttft(profile, 0.6 * cap, mean_prompt_tokens=512, mean_output_tokens=128,
                     requests=800)  # fmt: skip
    assert again == p99[1]
    assert p99[0] <= p99[1] < p99[2]
    assert p99[2] > 2.0  # above the analytic saturation point the queue runs away


def test_p99_rate_is_the_edge_of_the_target() -> None:
    profile = catalogue().profile(MODEL, "A10G")
    cap = analytic(profile, 512, 128)
    kw = {"mean_prompt_tokens": 512.0, "mean_output_tokens": 128.0, "requests": 800}
    rate = p99_rate(profile, ttft_slo_s=2.0, upper_rps=cap, rel_tol=0.02, **kw)  # type: ignore[arg-type]
    assert 0 < rate < cap  # a 16-slot replica cannot run at its analytic capacity
    assert p99_ttft(profile, rate, **kw) <= 2.0  # type: ignore[arg-type]
    assert p99_ttft(profile, rate * 1.03, **kw) > 2.0  # type: ignore[arg-type]


def test_the_packaged_table_covers_the_catalogue_at_the_default_targets() -> None:
    for model in catalogue().models:
        for acc in catalogue().accelerators_for(model):
            profile = catalogue().profile(model, acc)
            ratio = calibrated_ratio(
                TABLE, profile, ttft_slo_s=2.0, itl_slo_s=0.2, mean_prompt_tokens=1000,
                mean_output_tokens=200,
            )  # fmt: skip
            assert ratio is not None and 0 <= ratio <= 1, (model, acc)
            # another target, or a changed profile, is not matched to this measurement
            other = calibrated_ratio(
                TABLE, profile, ttft_slo_s=1.0, itl_slo_s=0.2, mean_prompt_tokens=1000,
                mean_output_tokens=200,
            )  # fmt: skip
            assert other is None


def test_calibrated_ratio_interpolates_between_grid_points_and_clamps() -> None:
    profile = catalogue().profile(MODEL, "L4")
    table = {
        profile_key(profile): {
            "ttft_slo_s": 2.0,
            "itl_slo_s": 0.2,
            "prompts": (100.0, 400.0),
            "outputs": (50.0, 200.0),
            "ratio": ((0.8, 0.6), (0.4, 0.2)),
        }
    }

    def at(p: float, o: float) -> float | None:
        return calibrated_ratio(table, profile, ttft_slo_s=2.0, itl_slo_s=0.2,
                                mean_prompt_tokens=p, mean_output_tokens=o)  # fmt: skip

    assert at(100, 50) == pytest.approx(0.8)
    assert at(400, 200) == pytest.approx(0.2)
    assert at(200, 50) == pytest.approx(0.6)  # halfway in log scale
    assert at(200, 100) == pytest.approx(0.5)
    assert at(10, 10) == pytest.approx(0.8) and at(1e5, 1e5) == pytest.approx(0.2)
    assert calibrated_ratio({}, profile, ttft_slo_s=2.0, itl_slo_s=0.2, mean_prompt_tokens=1,
                            mean_output_tokens=1) is None  # fmt: skip


def test_planned_rate_is_the_lower_of_utilisation_and_calibration() -> None:
    assert planned_rate(10.0, 0.8, None) == 8.0
    assert planned_rate(10.0, 0.8, 0.9) == 8.0  # the analytic figure is already conservative
    assert planned_rate(10.0, 0.8, 0.5) == 5.0
    assert planned_rate(10.0, 0.8, 0.0) == pytest.approx(10.0 * RATIO_FLOOR)


def test_every_sizer_plans_with_the_one_replica_capacity_rule() -> None:
    """Policies, the mix program, the optimum and the simulators all size with
    ``replica_capacity``: SLO capacity × utilisation, capped at the calibrated rate, spot × the
    share expected to survive a replacement's start-up; lengths onto a 2.2% grid."""
    d = Demand(rps=1.0, mean_prompt_tokens=1024.0, mean_output_tokens=256.0)  # on the grid
    series = RateSeries(600.0, (1.0, 1.0), (1024.0, 1010.0), (256.0, 251.0), (1.0, 1.0), 0.0)
    pools = catalogue().pools(MODEL)
    params = PlanParams()
    table = capacity_table(series, pools, params)
    spot_seen = False
    for j, pool in enumerate(pools):
        assert pool.profile is not None
        rps = analytic(pool.profile, 1024, 256)
        ratio = calibrated_ratio(TABLE, pool.profile, ttft_slo_s=2.0, itl_slo_s=0.2,
                                 mean_prompt_tokens=1024, mean_output_tokens=256)  # fmt: skip
        want = planned_rate(rps, 0.8, ratio) * spot_survival(pool.offering)
        assert replica_capacity(pool, d, params) == pytest.approx(want, rel=1e-12)
        assert table[0, j] == pytest.approx(want, rel=1e-12)
        # 1010 and 251 round up onto the grid points 1024 and 256 sit on: the same capacity
        assert table[1, j] == table[0, j]
        if pool.offering.capacity_class is CapacityClass.SPOT and pool.offering.interruption_rate:
            spot_seen = True
            assert spot_survival(pool.offering) < 1.0
            assert replica_capacity(pool, d, params) < planned_rate(rps, 0.8, ratio)
    assert spot_seen
    small = next(p for p in pools if p.offering.accelerator == "A10G")
    big = next(p for p in pools if p.offering.accelerator == "A100-80G")
    assert small.profile is not None and big.profile is not None
    od = CapacityClass.ON_DEMAND
    small = next(
        p for p in pools if p.offering.accelerator == "A10G" and p.offering.capacity_class is od
    )
    # the 16-slot A10G is measurably below 80% of its analytic capacity at these lengths ...
    assert replica_capacity(small, d, params) < 0.8 * analytic(small.profile, 1024, 256)
    # ... and without the table every pool is planned analytically
    plain = PlanParams(calibration={})
    assert replica_capacity(small, d, plain) == pytest.approx(
        0.8 * analytic(small.profile, 1024, 256)
    )
    assert replica_capacity(big, d, plain) >= replica_capacity(big, d, params)


def test_a_pool_without_a_measured_profile_is_planned_analytically() -> None:
    base = catalogue().profile(MODEL, "A10G")
    custom = Profile(MODEL, "custom", base.prefill_rate * 2, base.step_points, base.max_batch)
    pool = Pool("c", MODEL, catalogue().offering(MODEL, "A10G", "on_demand"), 0, custom)
    d = Demand(rps=1.0, mean_prompt_tokens=1024.0, mean_output_tokens=256.0)
    want = 0.8 * analytic(custom, 1024, 256)
    assert replica_capacity(pool, d, PlanParams()) == pytest.approx(want)


def test_knobs_are_typed_validated_and_a_misspelt_name_is_refused() -> None:
    params = PlanParams().with_knobs({"surge_min": 2.5, "spot_spread": 3, "spot_cooldown_s": 60})
    assert params.adaptive.surge_min == 2.5 and PlanParams().adaptive.surge_min == 0.0
    assert params.spot_hedge.spot_spread == 3 and isinstance(params.spot_hedge.spot_spread, int)
    # a name two policies share sets both
    assert params.adaptive.spot_cooldown_s == params.spot_hedge.spot_cooldown_s == 60.0
    assert params.knobs == {"surge_min": 2.5, "spot_spread": 3.0, "spot_cooldown_s": 60.0}
    assert PlanParams().with_knobs(params.knobs) == params
    check_knobs(dict.fromkeys(KNOBS - {"spot_max_share"}, 1.0))
    with pytest.raises(ValueError, match=r"unknown planner knob\(s\) \['holds'\]"):
        check_knobs({"hold_s": 1.0, "holds": 1.0})
    with pytest.raises(ValueError, match="whole number"):
        check_knobs({"max_remove_per_step": 1.5})
    with pytest.raises(ValueError, match=">= 0"):
        check_knobs({"hold_s": -1.0})
    with pytest.raises(ValueError, match="at most 1"):
        check_knobs({"max_remove_share": 2.0})
