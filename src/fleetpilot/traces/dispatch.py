"""``load_trace``: one entry point for ``--trace FILE``, choosing the loader from the file.

A request log (Azure, Mooncake, BurstGPT) loads as ``tuple[TraceRequest, ...]``; a rate series
(ServeGen folder or file, per-minute counts) as a :class:`~fleetpilot.core.series.RateSeries`.
Spot-market traces are a different input (``--spot``) and load with
:func:`~fleetpilot.traces.spot.load_spot_market`.

A *name* from :data:`NAMED_TRACES` stands for a file under the data folder: ``data_dir`` or,
by default, the ``FLEETPILOT_DATA`` environment variable (in this repository, ../shared/data).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from fleetpilot.core.series import RateSeries
from fleetpilot.core.workload import TraceRequest
from fleetpilot.errors import ConfigError
from fleetpilot.traces._files import open_text, reading
from fleetpilot.traces.counts import load_minute_counts
from fleetpilot.traces.requests import load_azure, load_burstgpt, load_mooncake
from fleetpilot.traces.servegen import load_servegen

__all__ = ["NAMED_TRACES", "load_trace", "resolve_trace", "trace_format"]

NAMED_TRACES: dict[str, str] = {
    "azure-conv": "azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv",
    "azure-code": "azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv",
    "mooncake-conversation": "mooncake-traces/conversation_trace.jsonl",
    "mooncake-synthetic": "mooncake-traces/synthetic_trace.jsonl",
    "servegen-m-large": "alibaba-servegen/language/m-large",
    "servegen-m-mid": "alibaba-servegen/language/m-mid",
    "servegen-m-small": "alibaba-servegen/language/m-small",
    "servegen-deepseek-r1": "alibaba-servegen/reason/deepseek-r1",
    "servegen-mm-image": "alibaba-servegen/multimodal/mm-image",
    "maf1": "spothedge-traces/workloads/maf1/cleaned.csv",
}

Trace = tuple[TraceRequest, ...] | RateSeries


def resolve_trace(path_or_name: str | Path, data_dir: str | Path | None = None) -> Path:
    """The file a ``--trace`` argument means: a path as given, else a name under the data
    folder."""
    name = str(path_or_name)
    if name not in NAMED_TRACES:
        path = Path(path_or_name)
        if not path.exists():
            raise ConfigError(
                f"{path}: no such trace file, nor a trace name ({', '.join(NAMED_TRACES)})"
            )
        return path
    root = data_dir if data_dir is not None else os.environ.get("FLEETPILOT_DATA")
    if not root:
        raise ConfigError(
            f"trace {name!r} names a file under the data folder: set FLEETPILOT_DATA to it"
        )
    return Path(root) / NAMED_TRACES[name]


def trace_format(path: Path) -> str:
    """``azure``, ``burstgpt``, ``mooncake``, ``servegen`` or ``minute-counts``, from the
    file's name and first line."""
    if path.is_dir():
        return "servegen"
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".jsonl":
        return "mooncake"
    if kind == ".json":
        raise ConfigError(
            f"{path}: a .json trace is a spot-market trace; load it with load_spot_market "
            "(--spot), not as a request trace"
        )
    with open_text(path) as f, reading(path):
        header = next(csv.reader(f), None) or []
    names = {h.strip().lower() for h in header}
    if {"timestamp", "contexttokens", "generatedtokens"} <= names:
        return "azure"
    if {"timestamp", "request tokens", "response tokens"} <= names:
        return "burstgpt"
    if {"time (min)", "requests"} <= names:
        return "minute-counts"
    if "total_rate_rps" in names or (len(header) >= 3 and _is_number(header[0])):
        return "servegen"
    raise ConfigError(
        f"{path}:1: unknown trace format (header {','.join(header)!r}); expected Azure "
        "(TIMESTAMP,ContextTokens,GeneratedTokens), BurstGPT (Timestamp,Model,Request tokens,"
        "Response tokens,...), per-minute counts (Time (min),Requests), a ServeGen trace, "
        "or Mooncake .jsonl"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_trace(
    path_or_name: str | Path,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    start_s: float = 0.0,
    end_s: float = math.inf,
) -> Trace:
    """Load a request trace or a rate series, whichever ``path_or_name`` holds.

    ``start_s`` / ``end_s`` select a time range of either (a request trace is shifted to start
    at 0, a series keeps its time axis: see ``RateSeries.slice``); ``limit`` caps the number
    of requests of a request trace and does not apply to series.
    """
    path = resolve_trace(path_or_name, data_dir)
    kind = trace_format(path)
    if kind == "azure":
        return load_azure(path, limit=limit, start_s=start_s, end_s=end_s)
    if kind == "burstgpt":
        return load_burstgpt(path, limit=limit, start_s=start_s, end_s=end_s)
    if kind == "mooncake":
        return load_mooncake(path, limit=limit, start_s=start_s, end_s=end_s)
    series = load_servegen(path) if kind == "servegen" else load_minute_counts(path)
    if start_s == 0 and end_s == math.inf:
        return series
    if not (math.isfinite(start_s) and end_s > start_s):
        raise ConfigError(f"time range [{start_s}, {end_s}) is empty")
    return series.slice(start_s, end_s)
