"""Write a comparison as a report: a Markdown page with PNG plots, plus CSV and JSON.

Plots (matplotlib, Agg backend — no screen needed): per policy, ready replicas stacked by
capacity class against demand over time, cost rate, p99 TTFT per window with the target, and
pre-emption events as marks.  ``summary.json`` and ``windows.csv`` are for machines.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from fleetpilot.core.model import CapacityClass
from fleetpilot.sim.compare import PolicyRun

__all__ = ["comparison_table", "write_report"]

_COLUMNS = (
    ("policy", "policy", "{}"),
    ("cost", "$ total", "{:,.2f}"),
    ("cost_per_million_tokens", "$/M tok", "{:,.3f}"),
    ("vs_optimum", "× optimum", "{:.2f}"),
    ("vs_hedged", "× hedged", "{:.2f}"),
    ("rh_reserved", "res h", "{:,.0f}"),
    ("rh_on_demand", "OD h", "{:,.0f}"),
    ("rh_spot", "spot h", "{:,.0f}"),
    ("ttft_p50", "TTFT p50", "{:.2f}"),
    ("ttft_p95", "p95", "{:.2f}"),
    ("ttft_p99", "p99", "{:.2f}"),
    ("e2e_p50", "e2e p50", "{:.1f}"),
    ("e2e_p95", "p95", "{:.1f}"),
    ("e2e_p99", "p99", "{:.1f}"),
    ("slo_attainment", "SLO %", "{:.2%}"),
    ("shed", "shed", "{:,.0f}"),
    ("lost", "lost", "{}"),
    ("preemptions", "pre-empted", "{}"),
)


def _rows(
    runs: Sequence[PolicyRun], optimum_cost: float, hedged_cost: float | None
) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        r = run.row(optimum_cost, hedged_cost)
        hours = r.get("replica_hours_by_class") or {}
        for cls in CapacityClass:
            r[f"rh_{cls.value}"] = hours.get(cls.value, 0.0)
        rows.append(r)
    return rows


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def comparison_table(
    runs: Sequence[PolicyRun], optimum_cost: float, title: str, hedged_cost: float | None = None
) -> Table:
    """``× optimum`` divides by the offline optimum (no hedge: a lower bound); ``× hedged`` by
    perfect knowledge that keeps the spot-loss hedge (:func:`~.optimum.hedged_optimum`), so a
    policy's excess over it is what not knowing the future costs."""
    table = Table(title=title)
    for i, (_, label, _) in enumerate(_COLUMNS):
        table.add_column(label, justify="left" if i == 0 else "right")
    for r in _rows(runs, optimum_cost, hedged_cost):
        table.add_row(*(_fmt(r.get(k), f) for k, _, f in _COLUMNS))
    return table


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(label for _, label, _ in _COLUMNS) + " |"
    rule = "|" + "---|" * len(_COLUMNS)
    body = ["| " + " | ".join(_fmt(r.get(k), f) for k, _, f in _COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _plot(runs: Sequence[PolicyRun], out: Path, ttft_slo_s: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    colours = {"reserved": "#4c72b0", "on_demand": "#dd8452", "spot": "#55a868"}
    for run in runs:
        tl = run.timeline
        if not tl:
            continue
        hours = [row["start"] / 3600.0 for row in tl]
        window_h = (hours[1] - hours[0]) if len(hours) > 1 else 1.0
        fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
        ax = axes[0]
        stacks = [[row.get(f"ready_{c}", 0.0) for row in tl] for c in colours]
        ax.stackplot(
            hours, *stacks, labels=list(colours), colors=list(colours.values()), step="post"
        )
        ax2 = ax.twinx()
        demand = [row["arrivals"] / (window_h * 3600.0) for row in tl]
        ax2.plot(hours, demand, color="black", lw=1, label="demand (req/s)")
        ax2.set_ylabel("demand, req/s")
        ax.set_ylabel("ready replicas")
        ax.legend(loc="upper left", fontsize=8)
        pre = [h for h, row in zip(hours, tl, strict=True) if row.get("preemptions")]
        for h in pre:
            ax.axvline(h, color="red", lw=0.6, alpha=0.6)
        ax.set_title(
            f"{run.policy} ({run.mode} level): capacity by class vs demand; red = pre-emption"
        )
        axes[1].plot(hours, [row["cost_per_hour"] for row in tl], drawstyle="steps-post")
        axes[1].set_ylabel("$/hour")
        p99 = [row["p99_ttft"] if row["p99_ttft"] is not None else float("nan") for row in tl]
        axes[2].plot(hours, p99, drawstyle="steps-post")
        axes[2].axhline(ttft_slo_s, color="red", ls="--", lw=0.8, label="TTFT target")
        axes[2].set_ylabel("p99 TTFT, s")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("hours")
        axes[2].legend(fontsize=8)
        fig.tight_layout()
        name = f"{run.policy}.png"
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        names.append(name)
    return names


def write_report(
    runs: Sequence[PolicyRun],
    optimum_cost: float,
    out: Path,
    *,
    title: str,
    ttft_slo_s: float,
    notes: Sequence[str] = (),
    agreement: Sequence[dict[str, Any]] = (),
    hedged_cost: float | None = None,
) -> Path:
    """Write report.md, one PNG per policy, summary.json and windows.csv under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(runs, optimum_cost, hedged_cost)
    images = _plot(runs, out, ttft_slo_s)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "title": title,
                "optimum_cost": optimum_cost,
                "hedged_optimum_cost": hedged_cost,
                "policies": rows,
                "agreement": list(agreement),
            },
            indent=2,
            default=float,
        )
    )
    with (out / "windows.csv").open("w", newline="") as f:
        fields = ["policy", *sorted({k for run in runs for row in run.timeline for k in row})]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for run in runs:
            for row in run.timeline:
                writer.writerow({"policy": run.policy, **row})
    lines = [f"# {title}", "", *notes, "", _markdown(rows), ""]
    lines.append(f"Offline optimum (lower bound, no spot-loss hedge): ${optimum_cost:,.2f}.")
    if hedged_cost is not None:
        lines.append(
            f"Perfect knowledge keeping the planner's spot-loss hedge: ${hedged_cost:,.2f} "
            f"({hedged_cost / optimum_cost:.2f} × the optimum, the hedge's price); a policy's "
            "`× hedged` is what not knowing the future costs it."
        )
    if agreement:
        lines += ["", "## Window level vs request level on the same trace", ""]
        lines.append("| policy | request $ | window $ | cost error | request SLO | window SLO |")
        lines.append("|---|---|---|---|---|---|")
        for a in agreement:
            lines.append(
                f"| {a['policy']} | {_fmt(a['request_cost'], '{:,.2f}')} | "
                f"{_fmt(a['window_cost'], '{:,.2f}')} | {_fmt(a['cost_error'], '{:+.1%}')} | "
                f"{_fmt(a['request_attainment'], '{:.2%}')} | "
                f"{_fmt(a['window_attainment'], '{:.2%}')} |"
            )
    lines += ["", "## Over time", ""]
    lines += [f"![{name}]({name})" for name in images]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
