"""Measure capacity at the SLO per catalogue profile and write the planner's calibration table.

For every (model, accelerator) profile of the packaged catalogue and every mean prompt × mean
output length of a grid, :func:`fleetpilot.core.calibration.p99_rate` finds the largest
Poisson arrival rate at which one replica (the perf model's ``BatchEngine`` in virtual time,
lengths lognormal around the means) keeps its p99 TTFT within the target; the table stores it
as a ratio to the analytic ``slo_capacity``.  The result is written as a Python literal to
``src/fleetpilot/core/calibration_data.py`` (importing it is not I/O, so ``core`` stays pure).

    .venv/bin/python bench/calibrate_capacity.py [--ttft 2.0] [--itl 0.2] [--check]

Takes a few minutes on one core (~1-4 s a shape).  ``--check`` prints the table without writing
it.  Re-run it when a profile in the catalogue changes: a changed profile no longer matches
its entry and is planned analytically.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.calibration import LENGTH_SIGMA, p99_rate, profile_key
from fleetpilot.core.capacity import slo_capacity

PROMPTS = (128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0)
OUTPUTS = (64.0, 128.0, 256.0, 512.0)
OUT = Path(__file__).resolve().parents[1] / "src/fleetpilot/core/calibration_data.py"

HEADER = '''# ruff: noqa: E501  (profile keys are long)
"""Measured capacity at the SLO per catalogue profile (generated; do not edit by hand).

Written by ``bench/calibrate_capacity.py``: for each profile (keyed by
:func:`fleetpilot.core.calibration.profile_key`) and each mean prompt × mean output length of
the grid, ``ratio`` is the largest Poisson arrival rate at which one replica keeps its p99 TTFT
within ``ttft_slo_s``, over the analytic ``slo_capacity`` at ``itl_slo_s``.  Lengths were
lognormal (log-sd {sigma}) around the means; {requests} requests per measurement.
"""

from __future__ import annotations

'''


def render(table: dict[str, dict[str, object]]) -> str:
    """``TABLE = {...}`` as ruff formats it (so the generated file passes the gates)."""

    def tup(xs: object) -> str:
        assert isinstance(xs, tuple)
        return "(" + ", ".join(repr(float(x)) for x in xs) + ")"

    out = ["TABLE: dict[str, dict[str, object]] = {"]
    for key in sorted(table):
        e = table[key]
        out.append(f"    {key!r}: {{".replace("'", '"'))
        out.append(f'        "itl_slo_s": {float(e["itl_slo_s"])!r},')  # type: ignore[arg-type]
        out.append(f'        "outputs": {tup(e["outputs"])},')
        out.append(f'        "prompts": {tup(e["prompts"])},')
        out.append('        "ratio": (')
        for row in e["ratio"]:  # type: ignore[attr-defined]
            out.append(f"            {tup(row)},")
        out.append("        ),")
        out.append(f'        "ttft_slo_s": {float(e["ttft_slo_s"])!r},')  # type: ignore[arg-type]
        out.append("    },")
    out.append("}")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ttft", type=float, default=2.0)
    ap.add_argument("--itl", type=float, default=0.2)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--rewrite", action="store_true", help="re-render the stored table only")
    args = ap.parse_args()
    if args.rewrite:
        from fleetpilot.core.calibration_data import TABLE

        OUT.write_text(HEADER.format(sigma=LENGTH_SIGMA, requests=args.requests) + render(TABLE))
        return
    cat = load_catalogue()
    table: dict[str, dict[str, object]] = {}
    for model in cat.models:
        for acc in cat.accelerators_for(model):
            profile = cat.profile(model, acc)
            t0 = time.process_time()
            ratio: list[list[float]] = []
            for prompt in PROMPTS:
                row = []
                for output in OUTPUTS:
                    analytic = slo_capacity(
                        profile,
                        ttft_slo_s=args.ttft,
                        itl_slo_s=args.itl,
                        mean_prompt_tokens=prompt,
                        mean_output_tokens=output,
                    ).requests_per_s
                    rate = p99_rate(
                        profile,
                        ttft_slo_s=args.ttft,
                        mean_prompt_tokens=prompt,
                        mean_output_tokens=output,
                        upper_rps=analytic,
                        requests=args.requests,
                    )
                    row.append(round(rate / analytic, 4))
                ratio.append(row)
            table[profile_key(profile)] = {
                "ttft_slo_s": args.ttft,
                "itl_slo_s": args.itl,
                "prompts": PROMPTS,
                "outputs": OUTPUTS,
                "ratio": tuple(tuple(r) for r in ratio),
            }
            print(f"{model} on {acc}: {time.process_time() - t0:.0f} s CPU")
            for prompt, row in zip(PROMPTS, ratio, strict=True):
                print(f"  prompt {prompt:>6g}: " + " ".join(f"{r:.2f}" for r in row))
    if args.check:
        return
    text = HEADER.format(sigma=LENGTH_SIGMA, requests=args.requests)
    OUT.write_text(text + render(table))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
