"""What ``fleetpilot guard check | eval | train`` do, printed with rich; the CLI only parses."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fleetpilot.errors import ConfigError
from fleetpilot.guard import data, pii
from fleetpilot.guard.detector import Detector
from fleetpilot.guard.evaluate import SetResult, evaluate, length_threshold
from fleetpilot.guard.model import Model

__all__ = ["DEFAULT_MODEL", "run_check", "run_eval", "run_train"]

DEFAULT_MODEL = Path(__file__).with_name("model.npz")


def run_check(text: str, model: Path | None, as_json: bool, console: Console) -> bool:
    """One text's verdict, its score, the layer that decided, and the text redacted."""
    t0 = time.perf_counter()
    verdict = Detector.from_path(model).check(text)
    took = (time.perf_counter() - t0) * 1000
    redacted, found = pii.Redactor().redact(text)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "attack": verdict.attack,
                    "score": round(verdict.score, 4),
                    "layer": verdict.layer,
                    "reading": verdict.reading,
                    "signatures": list(verdict.signatures),
                    "pii": sorted({f.kind for f in found}),
                    "redacted": redacted,
                    "ms": round(took, 3),
                }
            )
        )
    else:
        console.print(f"{verdict.describe()}  [{took:.2f} ms]")
        if found:
            console.print(f"personal data / secrets: {', '.join(sorted({f.kind for f in found}))}")
            console.print(f"redacted: {redacted}")
    return verdict.attack


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def run_eval(
    source: Path | None, model: Path | None, side: str, console: Console
) -> list[SetResult]:
    """The detector on the evaluation side of the split (the same seed as training), or on
    every row of a file, beside the length-only baseline."""
    root = data.data_root(source) if source is None or source.is_dir() else source
    examples = data.load(root)
    if not examples:
        raise ConfigError(f"no labelled rows under {root}")
    if root.is_dir():
        fams = data.families(examples)
        sides = data.split(examples, fams)
        train = [ex for ex, s in zip(examples, sides, strict=True) if s == "train" and ex.train]
        chosen = [ex for ex, s in zip(examples, sides, strict=True) if side == "all" or s == side]
    else:
        train, chosen = [], examples
    detector = Detector.from_path(model)
    base = length_threshold(train) if train else float("inf")
    with console.status("evaluating") as status:
        results = evaluate(
            detector, chosen, base, lambda d, n: status.update(f"evaluating {d}/{n}")
        )
    table = Table(title=f"guard: {len(chosen)} rows ({side}), threshold {detector.threshold:.3f}")
    for col in ("source", "attacks", "benign", "TPR", "FPR", "F1", "AUC", "p50 ms", "p99 ms",
                "length TPR", "length FPR", "length AUC"):  # fmt: skip
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in results:
        table.add_row(
            r.source, str(r.attacks), str(r.benign), _pct(r.tpr), _pct(r.fpr), _num(r.f1),
            _num(r.auc), f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", _pct(r.base_tpr),
            _pct(r.base_fpr), _num(r.base_auc),
        )  # fmt: skip
    console.print(table)
    base_note = f"{base:,.0f} characters" if base != float("inf") else "none (no training side)"
    console.print(f"length-only baseline: a text of at least {base_note} is an attack")
    return results


def run_train(source: Path | None, out: Path, seed: int, console: Console) -> Model:
    """Train on the training side of a data folder's family split, or on every row of one
    file (a JSON-lines or CSV file with text and label)."""
    root = data.data_root(source) if source is None or source.is_dir() else source
    examples = data.load(root)
    if len({ex.label for ex in examples}) < 2:
        raise ConfigError(f"{root}: training needs both attack (1) and benign (0) rows")
    fams = data.families(examples)
    if root.is_dir():
        sides = data.split(examples, fams, seed=seed)
        keep = [i for i, s in enumerate(sides) if s == "train" and examples[i].train]
    else:
        keep = list(range(len(examples)))
    console.print(
        f"{len(examples)} rows, {len(set(fams))} families; training on {len(keep)} "
        f"(the rest is the evaluation side, and sets whose licence forbids it)"
    )
    from fleetpilot.guard.train import train

    t0 = time.perf_counter()
    trained = train(
        [examples[i] for i in keep], [fams[i] for i in keep], seed=seed,
        progress=lambda m: console.print(f"  {m}"),
    )  # fmt: skip
    trained.model.save(
        out, meta={"seed": str(seed), "rows": str(trained.rows), "l2": str(trained.l2)}
    )
    console.print(
        f"saved {out} in {time.perf_counter() - t0:.0f} s: threshold "
        f"{trained.model.threshold:.3f}, l2 {trained.l2:g}"
    )
    table = Table(title="out of fold, on the training side")
    table.add_column("set")
    table.add_column("rate", justify="right")
    for s, r in sorted(trained.oof_tpr.items()):
        table.add_row(f"{s} (TPR)", _pct(r))
    for s, r in sorted(trained.oof_fpr.items()):
        table.add_row(f"{s} (FPR)", _pct(r))
    console.print(table)
    return trained.model
