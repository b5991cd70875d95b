"""What a token costs a tenant on each pool, and the worst case a request can cost.

A pool's price is ``price_per_mtok_input`` / ``price_per_mtok_output`` where its fleet-file
entry sets them (a list price, with whatever margin the operator charges).  Otherwise it is
what a token costs the fleet on that pool at best: the replica-hour price spread over a
full batch's throughput (output) or over the prefill rate (input), so tenants are charged
the fleet's own cost, never a guess above it.

A budget hold must be an upper bound on what the request can be charged, or budgets could
be overspent: it prices the prompt at its UTF-8 length (a byte-level BPE token covers at
least one byte; the gateway's own estimate can read low) plus ``max_tokens``, at the dearest
pool that serves the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleetpilot.core.model import Pool
from fleetpilot.core.perf import step_time

__all__ = ["Prices", "TokenPrice", "pool_price"]

TEMPLATE_TOKENS = 16  # a chat template's tokens around each message, at most


@dataclass(frozen=True, slots=True)
class TokenPrice:
    input: float  # $ per prompt token
    output: float  # $ per completion token

    def cost(self, prompt: int, completion: int) -> float:
        return prompt * self.input + completion * self.output


def pool_price(
    pool: Pool, input_per_mtok: float | None = None, output_per_mtok: float | None = None
) -> TokenPrice:
    per_s = pool.offering.price_per_hour / 3600.0
    profile = pool.profile
    if profile is None:
        derived = TokenPrice(0.0, 0.0)
    else:
        full = profile.max_batch
        derived = TokenPrice(per_s / profile.prefill_rate, per_s * step_time(profile, full) / full)
    return TokenPrice(
        derived.input if input_per_mtok is None else input_per_mtok / 1e6,
        derived.output if output_per_mtok is None else output_per_mtok / 1e6,
    )


class Prices:
    """Token prices by pool, and each model's dearest, over a live pool table (the
    gateway's, which the controller's membership calls add to)."""

    def __init__(
        self,
        pools: Mapping[str, Pool],
        overrides: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> None:
        self.pools = pools
        self.overrides = dict(overrides or {})
        self._by_pool: dict[str, tuple[Pool, TokenPrice]] = {}
        self._dearest: dict[str, tuple[int, TokenPrice]] = {}

    def of_pool(self, name: str) -> TokenPrice | None:
        pool = self.pools.get(name)
        if pool is None:
            return None
        known = self._by_pool.get(name)
        if known is None or known[0] is not pool:
            known = self._by_pool[name] = (
                pool,
                pool_price(pool, *self.overrides.get(name, (None, None))),
            )
        return known[1]

    def dearest(self, model: str) -> TokenPrice:
        cached = self._dearest.get(model)
        if cached is not None and cached[0] == len(self.pools):
            return cached[1]
        best = TokenPrice(0.0, 0.0)
        for name, pool in self.pools.items():
            if pool.model == model:
                p = self.of_pool(name) or best
                best = TokenPrice(max(best.input, p.input), max(best.output, p.output))
        self._dearest[model] = (len(self.pools), best)
        return best

    def worst_case(self, model: str, prompt_bytes: int, messages: int, max_tokens: int) -> float:
        return self.dearest(model).cost(
            prompt_bytes + TEMPLATE_TOKENS * max(messages, 1), max_tokens
        )

    def actual(self, pool: str | None, model: str, prompt: int, completion: int) -> float:
        price = self.of_pool(pool or "") or self.dearest(model)
        return price.cost(prompt, completion)
