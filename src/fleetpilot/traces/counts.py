"""Per-minute arrival counts (the SpotHedge/SkyServe ``workloads/maf1/cleaned.csv`` format).

``"Time (min)","Requests"``: one row per minute, the number of requests that arrived in it.
The result is a :class:`~fleetpilot.core.series.RateSeries` of 60-s windows with CV 1.0 (a
count says nothing about arrivals within its minute) and the given mean lengths.  Minutes
left out of the file are minutes without requests; minutes must increase.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fleetpilot.core.series import RateSeries
from fleetpilot.errors import ConfigError
from fleetpilot.traces._files import (
    DEFAULT_MEAN_OUTPUT_TOKENS,
    DEFAULT_MEAN_PROMPT_TOKENS,
    header_columns,
    open_text,
    reading,
    to_float,
    to_int,
)

__all__ = ["load_minute_counts"]

_COLUMNS = ("Time (min)", "Requests")


def load_minute_counts(
    path: Path | str,
    *,
    mean_prompt_tokens: float = DEFAULT_MEAN_PROMPT_TOKENS,
    mean_output_tokens: float = DEFAULT_MEAN_OUTPUT_TOKENS,
) -> RateSeries:
    """A rate series from per-minute counts; it starts at the file's first minute."""
    path = Path(path)
    counts: list[float] = []
    first: int | None = None
    with open_text(path) as f, reading(path):
        reader = csv.reader(f)
        cols = header_columns(next(reader, None), _COLUMNS, path)
        minute_col, count_col = cols["time (min)"], cols["requests"]
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) <= max(minute_col, count_col):
                raise ConfigError(f"{path}:{line}: expected 'Time (min),Requests', got {row!r}")
            minute = to_int(row[minute_col], path, line, "Time (min)")
            count = to_float(row[count_col], path, line, "Requests")
            if first is None:
                first = minute
            i = minute - first
            if i < len(counts):
                raise ConfigError(
                    f"{path}:{line}: minute {minute} comes after minute {first + len(counts) - 1}"
                )
            counts.extend([0.0] * (i - len(counts)))
            counts.append(count)
    n = len(counts)
    return RateSeries(
        window_s=60.0,
        rps=tuple(c / 60.0 for c in counts),
        mean_prompt_tokens=(mean_prompt_tokens,) * n,
        mean_output_tokens=(mean_output_tokens,) * n,
        cv=(1.0,) * n,
        start_s=60.0 * (first or 0),
    )
