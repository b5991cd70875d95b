"""How long one guard check takes on one core, by prompt length, beside a length-only check
measured in the same run: the layered detector alone, and with the personal-data pass the
gateway's stage also runs on each user text.

Texts: the shared guard sets' own rows (``$FLEETPILOT_DATA/guard``, when present), bucketed
by length in tokens (about four characters each), and, for the longest buckets, honest and
attack prompts built to length from them (the sets have few rows past 1,000 tokens); with no
shared data, the package's own synthetic prose.  Each text is checked ``--repeat`` times in
this one process (pinned to one core where the machine allows); p50 and p99 are over every
check of a bucket.  The length-only check is what the evaluation's baseline does: ``len``
against a threshold.  The machine's other load is measured meanwhile; above a quarter of a
core the table says the figures were taken on a busy machine.

    .venv/bin/python bench/guard_speed.py [--repeat 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from _machine import OtherLoad, reference_ms
from fleetpilot.guard import data, pii
from fleetpilot.guard.detector import Detector

BUCKETS = ((0, 64), (64, 256), (256, 1000), (1000, 2000), (2000, 4000))
TARGET_P99_MS = 1.0
_PROSE = (
    "The quarterly report shows that revenue grew in every region, while costs rose more "
    "slowly than expected. Please summarise the main drivers and list three risks. "
)


def _texts(seed: int) -> list[str]:
    try:
        rows = [ex.text for ex in data.load(data.data_root())]
    except Exception:
        rows = []
    rng = random.Random(seed)
    if not rows:
        rows = [_PROSE * k for k in (1, 3, 10)]
    long: list[str] = []
    for target in (1500, 3000, 3990):  # tokens: glue rows up to the length
        for _ in range(20):
            parts, size = [], 0
            while size < target * 4:
                t = rng.choice(rows)
                parts.append(t)
                size += len(t) + 1
            long.append(" ".join(parts)[: target * 4])
    return rows + long


def _measure(
    detector: Detector, by_bucket: dict[tuple[int, int], list[str]], repeat: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for (lo, hi), ts in by_bucket.items():
        if not ts:
            continue
        guard_ms, both_ms, length_ms = [], [], []
        for t in ts:
            detector.check(t)  # warm
            for _ in range(repeat):
                a = time.perf_counter()
                detector.check(t)
                b = time.perf_counter()
                pii.Redactor().redact(t)
                c = time.perf_counter()
                _ = len(t) >= 4506
                d = time.perf_counter()
                guard_ms.append((b - a) * 1000)
                both_ms.append((c - a) * 1000)
                length_ms.append((d - c) * 1000)
        g, gp, ln = np.array(guard_ms), np.array(both_ms), np.array(length_ms)
        rows.append(
            {
                "bucket": f"{lo}–{hi}",
                "texts": len(ts),
                "checks": len(g),
                "guard_p50_ms": float(np.percentile(g, 50)),
                "guard_p99_ms": float(np.percentile(g, 99)),
                "with_pii_p50_ms": float(np.percentile(gp, 50)),
                "with_pii_p99_ms": float(np.percentile(gp, 99)),
                "length_p50_ms": float(np.percentile(ln, 50)),
                "length_p99_ms": float(np.percentile(ln, 99)),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="checks of each text")
    ap.add_argument("--sample", type=int, default=150, help="texts per bucket, at most")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    console = Console(width=max(Console().width, 150))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    detector = Detector()
    rng = random.Random(args.seed)
    texts = _texts(args.seed)
    by_bucket: dict[tuple[int, int], list[str]] = {b: [] for b in BUCKETS}
    for t in texts:
        tokens = len(t) / 4
        for lo, hi in BUCKETS:
            if lo <= tokens < hi:
                by_bucket[(lo, hi)].append(t)
    for b, ts in by_bucket.items():
        rng.shuffle(ts)
        by_bucket[b] = ts[: args.sample]
    reference = reference_ms()
    with OtherLoad() as load:
        rows = _measure(detector, by_bucket, args.repeat)
    table = Table(title="one guard check on one core, by prompt length (tokens ≈ chars / 4)")
    for col in ("tokens", "texts", "checks", "detector p50 ms", "detector p99 ms",
                "+ PII p50 ms", "+ PII p99 ms", "length-only p50 ms", "length-only p99 ms",
                f"detector p99 ≤ {TARGET_P99_MS} ms"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        ok = r["guard_p99_ms"] <= TARGET_P99_MS
        mark = "busy: not judged" if load.busy else ("PASS" if ok else "MISS")
        table.add_row(
            r["bucket"], str(r["texts"]), str(r["checks"]), f"{r['guard_p50_ms']:.3f}",
            f"{r['guard_p99_ms']:.3f}", f"{r['with_pii_p50_ms']:.3f}",
            f"{r['with_pii_p99_ms']:.3f}",
            f"{r['length_p50_ms']:.4f}", f"{r['length_p99_ms']:.4f}", mark,
        )  # fmt: skip
    console.print(table)
    console.print(load.line())
    console.print(
        f"this machine's speed: {reference:.1f} ms to sum a million integers in Python "
        "(compare absolute figures between machines by it)"
    )
    if args.json is not None:
        out = {"rows": rows, "other_cores": load.cores, "steal_cores": load.steal,
               "reference_ms": reference}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
