"""``fleetpilot advise``: load history, ask :func:`fleetpilot.core.advisor.advise`, print it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.advisor import Advice, advise
from fleetpilot.core.capacity import PlanParams
from fleetpilot.core.model import CapacityClass, Demand
from fleetpilot.core.series import RateSeries, windows_of

__all__ = ["print_advice", "run_advice"]


def run_advice(
    trace: str,
    *,
    model: str,
    accelerators: Sequence[str] = (),
    window_s: float = 600.0,
    ttft_slo_s: float = 2.0,
    catalogue: Path | None = None,
) -> Advice:
    from fleetpilot.traces import load_trace

    loaded = load_trace(trace)
    series = loaded if isinstance(loaded, RateSeries) else windows_of(loaded, window_s)
    history = [
        Demand(rps=r, mean_prompt_tokens=p, mean_output_tokens=o)
        for r, p, o in zip(
            series.rps, series.mean_prompt_tokens, series.mean_output_tokens, strict=True
        )
    ]
    classes = (CapacityClass.RESERVED, CapacityClass.ON_DEMAND, CapacityClass.SPOT)
    pools = load_catalogue(catalogue).pools(model, list(accelerators) or None, classes)
    return advise(history, series.window_s, pools, PlanParams(ttft_slo_s=ttft_slo_s))


def print_advice(advice: Advice, console: Console) -> None:
    table = Table(title=f"reserved advisor over {advice.hours:,.0f} hours of history")
    for col in ("accelerator", "break-even use", "commit (vs on-demand)", "commit (vs spot mix)",
                "$ all on-demand", "$ with commitment", "saving"):  # fmt: skip
        table.add_column(col, justify="right")
    for a in advice.per_accelerator:
        table.add_row(
            a.accelerator, f"{a.break_even:.0%}", str(a.reserved), str(a.reserved_vs_spot),
            f"{a.cost_on_demand:,.0f}", f"{a.cost_reserved:,.0f}", f"{a.saving:.1%}",
        )  # fmt: skip
    console.print(table)
    commit = ", ".join(f"{n}x {pool}" for pool, n in advice.commit.items()) or "nothing"
    console.print(
        f"Recommendation: commit to {commit}.  Cost over the history: all on-demand "
        f"${advice.cost_on_demand:,.0f}; spot with on-demand fallback "
        f"${advice.cost_spot_fallback:,.0f}; recommended ${advice.cost_recommended:,.0f} "
        f"(saves {advice.saving_vs_on_demand:.1%} vs on-demand, "
        f"{advice.saving_vs_spot_fallback:.1%} vs spot with fallback)."
    )
    if advice.short_windows:
        console.print(f"[yellow]{advice.short_windows} windows exceeded the quotas[/]")
