"""The adaptive capacity policy: forecast → hold → cheapest hedged mix → shaping → spend cap.

``adaptive(snapshot, state, params) -> (Plan, state)`` is a capacity policy (see
:mod:`fleetpilot.core.capacity`).  Each control step it

1. feeds the observed demand of every model (or size class, :func:`~fleetpilot.core.mix.
   size_key`) to its forecaster (:mod:`fleetpilot.core.forecast`) and asks for the point
   forecast and the upper quantile over the provisioning lead (the slowest pool's
   ``startup_s``) plus one control interval.  The demand planned for is ``max(point, upper ×
   (1 - upper_credit × (1 - utilisation)))``: the utilisation headroom and the quantile cover
   the same risk, a demand above the forecast, so with ``upper_credit`` 1 the quantile need
   fit only within the capacity at the SLO itself.  A first call with nothing measured keeps
   the fleet as it is;
2. holds that demand for ``hold_s`` (:func:`~fleetpilot.core.shaping.hold_demand`): the fleet
   grows at once and shrinks only once demand stayed low that long;
3. keeps a *surge floor* once ``reserve_s`` of history is in: capacity at the SLO for the
   largest surge seen so far (``surge_learn``: a step's rate over the peak known when its
   capacity was decided; not learnt from a return after silence, whose reference is a
   trickle) × the largest rate of the last ``reserve_s``, at least ``surge_min`` × it.  A
   jump with no precursor is met only by capacity already running;
4. multiplies the planned demand by the learnt excess burstiness over Poisson
   (:mod:`fleetpilot.core.burstiness`, ``burst_quantile``) where the observer measures it;
5. plans the mix (:func:`~fleetpilot.core.mix.plan_mix`) and holds it
   (:func:`~fleetpilot.core.shaping.keep_mix`, ``mix_hysteresis``);
6. shapes it: additions at once, at most ``max_remove_per_step`` (or ``max_remove_share`` of
   the fleet) removed per step, only a surplus above ``drain_reserve`` × the ``reserve_s`` peak
   at once; nothing removed in the first ``hold_s``, nor for ``silent_hold_s`` while a model
   that had requests counts none (no signal is not no demand, as Kubernetes' HPA holds on
   missing metrics); make before break; and the spend cap.

A spot pool with fewer live replicas than its target (launches the market refused,
pre-emptions not replaced) is planned at no more than it has for ``spot_cooldown_s`` since it
was last seen short (SpotHedge's rule), so the rest moves to other pools or on-demand; an
engine that knows a market is gone can pass that pool with ``quota=0``.

The knobs are :class:`~fleetpilot.core.knobs.AdaptiveKnobs` (``params.adaptive``) and the
mix program's :class:`~fleetpilot.core.knobs.MixKnobs`; the figures behind each default are in
``bench/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fleetpilot.core.burstiness import BurstState, learn, learnt_excess
from fleetpilot.core.capacity import Plan, PlanParams, plan_cost, replica_capacity
from fleetpilot.core.forecast import ForecastParams, ForecastState, forecast, new_state, observe
from fleetpilot.core.mix import SIZE_CLASSES, is_spot, plan_mix, size_key
from fleetpilot.core.model import Demand, Pool, ReplicaState, Snapshot, blend
from fleetpilot.core.shaping import (
    bound_churn,
    drain_to_reserve,
    hold_demand,
    keep_mix,
    make_before_break,
    trim_to_cap,
)

__all__ = ["PlannerState", "adaptive"]

_TOL = 1e-6
# A step below this share of the model's decayed peak (half-life below) is quiet: an outage
# or the trickle after one, whose return is no surge to learn the floor from.
_QUIET = 0.1
_LEVEL_HALF_LIFE_S = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class PlannerState:
    """What :func:`adaptive` keeps between steps (a value; each step returns a new one)."""

    forecasts: Mapping[str, ForecastState] = field(default_factory=dict)
    held: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    last_now: float | None = None
    started: float | None = None  # the first call: no scale-down before hold_s has passed
    short_at: Mapping[str, float] = field(default_factory=dict)  # spot pool → last seen short
    cooldown: Mapping[str, float] = field(default_factory=dict)  # spot pool → its cool-down
    seen_at: Mapping[str, float] = field(default_factory=dict)  # model → last step with requests
    quiet_at: Mapping[str, float] = field(default_factory=dict)  # model → last quiet step
    level: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # decayed peak, at
    observed: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    surge: Mapping[str, float] = field(default_factory=dict)  # model → largest surge seen
    peaks: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    bursts: Mapping[str, BurstState] = field(default_factory=dict)  # demand key → learnt


def _demand_keys(models: Sequence[str], observed: Mapping[str, Demand]) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for m in models:
        sized = [size_key(m, s) for s in SIZE_CLASSES if size_key(m, s) in observed]
        keys[m] = sized or ([m] if m in observed else [])
    return keys


def _slo_capacity(
    pools: Sequence[Pool], demand: Mapping[str, Sequence[Demand]], params: PlanParams
) -> dict[str, float]:
    """Requests/s one replica of each pool carries at the SLO itself (planned / utilisation),
    at its model's planned request mix."""
    out: dict[str, float] = {}
    for p in pools:
        shape = blend(demand.get(p.model, ()))
        if shape is None:
            continue
        out[p.name] = replica_capacity(p, shape, params) / max(params.utilisation, _TOL)
    return out


_LIVE = (ReplicaState.STARTING, ReplicaState.READY)


def _live(snapshot: Snapshot, pool: str) -> int:
    return sum(1 for r in snapshot.replicas if r.pool == pool and r.state in _LIVE)


def _spot_short(snapshot: Snapshot, short_at: Mapping[str, float]) -> dict[str, float]:
    """Spot pools with fewer live replicas than their target are short: the market would not
    give (or took back) what was asked and the engine could not replace it.  Returns when each
    spot pool was last seen short (only engines that report replicas can tell)."""
    out = dict(short_at)
    if not snapshot.sees_replicas:
        return out
    for p in snapshot.pools:
        if is_spot(p) and _live(snapshot, p.name) < p.offering.within_quota(p.target):
            out[p.name] = snapshot.now
    return out


def _backoff(
    state: PlannerState, short_at: Mapping[str, float], now: float, base: float, most: float
) -> dict[str, float]:
    """Each spot pool's cool-down: ``base``, doubled (up to ``most`` × ``base``) each time
    the pool falls short again within two cool-downs of the last time, and back to ``base``
    once it has held longer.  A market that keeps refusing is left for hours, not re-tried
    every half hour with the fleet's SLO as the stake."""
    out = dict(state.cooldown)
    for name, t in short_at.items():
        newly = t == now and state.short_at.get(name, -math.inf) != state.last_now
        if not newly:
            continue
        was = state.short_at.get(name)
        cur = out.get(name, base)
        again = was is not None and now - was <= 2.0 * cur
        out[name] = min(2.0 * cur, most * base) if again else base
    return out


def _capped_at_live(pool: Pool, snapshot: Snapshot) -> Pool:
    """A spot pool seen short recently, as the planner may use it: no more than it has."""
    if not is_spot(pool):
        return pool
    quota = pool.offering.within_quota(_live(snapshot, pool.name))
    return replace(pool, offering=replace(pool.offering, quota=quota))


def adaptive(
    snapshot: Snapshot, state: PlannerState | None, params: PlanParams
) -> tuple[Plan, PlannerState]:
    """The adaptive capacity policy (module docstring): forecast, hold, mix, shape, cap."""
    state = state or PlannerState()
    now = snapshot.now
    interval = 0.0 if state.last_now is None else max(now - state.last_now, 0.0)
    knobs = params.adaptive
    hold_s = knobs.hold_s
    pools = snapshot.pools
    models = sorted({p.model for p in pools})
    keys = _demand_keys(models, snapshot.demand)

    if state.last_now is None and not any(
        snapshot.demand[k].rps > 0 for ks in keys.values() for k in ks
    ):
        # Nothing measured yet (an engine's first call, before any traffic was counted): the
        # fleet as it is, rather than a plan for "no demand" at made-up request lengths.
        targets = {p.name: p.target for p in pools}
        cost = plan_cost(targets, pools)
        plan = Plan(targets, note="nothing observed yet: fleet kept", cost_per_hour=cost)
        return plan, PlannerState(last_now=now, started=now)

    forecasts = dict(state.forecasts)
    held = dict(state.held)
    seen_at = dict(state.seen_at)
    quiet_at = dict(state.quiet_at)
    level = dict(state.level)
    observed = dict(state.observed)  # model → window of observed rps (sliding max)
    reserve_s = knobs.reserve_s
    reserve: dict[str, float] = {}  # model → SLO capacity that only drains slowly
    silent = False  # a model that had requests lately counts none: no signal, nothing removed
    hushed: set[str] = set()  # those models: their pools stay as they are
    silent_s = knobs.silent_hold_s
    demand: dict[str, list[Demand]] = {}
    expected: dict[str, list[Demand]] = {}  # what the fleet carries after losing a spot pool
    surge = dict(state.surge)
    bursts = dict(state.bursts)
    peaks = dict(state.peaks)
    floor: dict[str, float] = {}  # model → SLO capacity kept for a surge like the largest seen
    for model, model_keys in keys.items():
        seen = sum(snapshot.demand[k].rps for k in model_keys)
        was, at = level.get(model, (0.0, now))
        level[model] = (max(seen, was * 0.5 ** ((now - at) / _LEVEL_HALF_LIFE_S)), now)
        if seen > 0:
            seen_at[model] = now
        elif now - seen_at.get(model, -math.inf) <= silent_s:
            silent = True
            hushed.add(model)
        if seen < _QUIET * level[model][0]:  # an outage, or a trickle where traffic was
            quiet_at[model] = now
        lead = max((p.offering.startup_s for p in pools if p.model == model), default=0.0)
        cutoff = now - interval - lead
        past = [e for e in peaks.get(model, ()) if e[0] <= cutoff]
        newer = [e for e in peaks.get(model, ()) if e[0] > cutoff]
        warm = state.started is not None and now - state.started >= reserve_s
        # a return after silence is no surge: its reference peak is the trickle or nothing
        steady = now - quiet_at.get(model, -math.inf) > reserve_s
        if warm and steady and past and past[-1][1] > 0 and knobs.surge_learn > 0:
            surge[model] = max(surge.get(model, 0.0), seen / past[-1][1])
        observed[model], peak = hold_demand(observed.get(model, ()), now, seen, reserve_s)
        peaks[model] = (*past[-1:], *newer, (now, peak))
        reserve[model] = knobs.drain_reserve * peak
        ratio = max(surge.get(model, 0.0), knobs.surge_min)
        floor[model] = ratio * peak if warm else 0.0
        horizon = lead + interval
        for key in model_keys:
            obs = snapshot.demand[key]
            fs = forecasts.get(key) or new_state(ForecastParams(horizon_s=max(horizon, 1.0)))
            if obs.rps > 0:
                fs = observe(
                    fs, now, obs.rps, obs.mean_prompt_tokens, obs.mean_output_tokens,
                    obs.batch_share,
                )  # fmt: skip
            else:  # no request seen: the rate is 0, the lengths are unknown (not Demand's)
                fs = observe(fs, now, 0.0)
            forecasts[key] = fs
            fc = forecast(fs, now, horizon)
            credit = knobs.upper_credit
            want = max(fc.rps, fc.upper_rps * (1.0 - credit * (1.0 - params.utilisation)))
            if obs.burst_excess is not None and obs.rps > 0:
                bursts[key] = learn(
                    bursts.get(key, BurstState()), now, obs.burst_excess,
                    obs.rps * max(interval, 1.0), knobs.burst_half_life_s,
                )  # fmt: skip
            if knobs.burst_quantile > 0 and key in bursts:
                want *= learnt_excess(bursts[key], knobs.burst_quantile)
            held[key], rps = hold_demand(held.get(key, ()), now, want, hold_s)
            shape = Demand(
                rps=rps,
                mean_prompt_tokens=fc.mean_prompt_tokens,
                mean_output_tokens=fc.mean_output_tokens,
                batch_share=fc.batch_share,
            )
            demand.setdefault(model, []).append(shape)
            expected.setdefault(model, []).append(replace(shape, rps=max(fc.rps, obs.rps)))
        total = sum(d.rps for d in demand.get(model, ()))
        need = floor[model] * params.utilisation / max(params.safety, _TOL)
        if total > 0 and need > total:
            demand[model] = [replace(d, rps=d.rps * need / total) for d in demand[model]]

    short_at = _spot_short(snapshot, state.short_at)
    cooldown = _backoff(state, short_at, now, knobs.spot_cooldown_s, knobs.spot_backoff_max)
    pools = tuple(
        _capped_at_live(p, snapshot)
        if now - short_at.get(p.name, -math.inf) < cooldown.get(p.name, knobs.spot_cooldown_s)
        else p
        for p in pools
    )

    def plan_again(within: Sequence[Pool]) -> Plan:
        return plan_mix(within, demand, params, expected=expected)

    raw = plan_again(pools)
    price = {p.name: p.offering.price_per_hour for p in pools}
    # replicas beyond a pool's quota (a spot market gone: quota 0) go at once, uncounted
    current = {p.name: p.offering.within_quota(p.target) for p in pools}
    raw = keep_mix(raw, pools, current, knobs.mix_hysteresis, plan_again)
    share = knobs.max_remove_share
    max_remove = max(knobs.max_remove_per_step, math.floor(share * sum(current.values())))
    started = now if state.started is None else state.started
    if now - started < hold_s or silent:
        max_remove = 0  # demand has not been seen low for hold_s yet: the fleet may be needed
    shaped = bound_churn(raw.targets, current, max_remove, price)
    for p in pools:  # a model gone silent keeps the fleet that served it, mix and all
        if p.model in hushed:
            shaped[p.name] = current[p.name]
    if max_remove > 0:
        shaped = drain_to_reserve(
            shaped, raw.targets, _slo_capacity(pools, demand, params),
            {p.name: p.model for p in pools}, reserve, price,
        )  # fmt: skip
    if max_remove > 0:
        shaped = make_before_break(shaped, current, snapshot, demand, params)
    order = sorted(shaped, key=lambda n: (-price.get(n, 0.0), n))  # priciest first
    shaped = trim_to_cap(shaped, pools, params.spend_cap_per_hour, order, keep=raw.targets)
    kept = sum(shaped.values()) - sum(raw.targets.values())
    note = raw.note + (f"; {kept} kept while draining slowly" if kept else "")
    cost = float(sum(price[n] * k for n, k in shaped.items()))
    plan = replace(raw, targets=shaped, note=note, cost_per_hour=cost)
    return plan, PlannerState(
        forecasts=forecasts,
        held=held,
        last_now=now,
        started=started,
        short_at=short_at,
        cooldown=cooldown,
        seen_at=seen_at,
        quiet_at=quiet_at,
        level=level,
        observed=observed,
        surge=surge,
        peaks=peaks,
        bursts=bursts,
    )
