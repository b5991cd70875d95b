"""Alibaba ServeGen rate series: per-client 10-minute windows, summed into one model's traffic.

A ServeGen model folder (``language/m-large``, ``reason/deepseek-r1``, ...) holds one
``chunk-<client>-trace.csv`` per client, without header, one row per window::

    window start (s), rate (req/s), cv of inter-arrival times, family (Gamma|Weibull|empty), p1, p2

and, for some models, ``chunk-<client>-dataset.json``: ``{window start: {field: "{value: prob,
...}"}}``, distributions of request lengths per (6-hour) window.

Per window, clients are combined as independent renewal processes:

- the rate is the sum of the clients' rates;
- the CV is ``sqrt(sum(r_i * cv_i**2) / sum(r_i))``.  A superposition of independent renewal
  processes has count variance ``sum(r_i * cv_i**2) * t`` over long intervals (Whitt's
  asymptotic method), and a renewal process with this CV has the same; a plain rate-weighted
  mean of CVs would understate how bursty a few bursty clients make the whole.  The data has
  extreme windows: in m-small one client sent ~650,000 requests in one clump (cv ~800), and
  the window's combined cv is ~630 (m-large peaks at ~78; medians are ~3); cap ``cv`` with
  ``dataclasses.replace`` if a simulation should not replay such clumps;
- mean lengths are rate-weighted means of each client's distribution means, from its latest
  dataset window at or before the trace window.  The prompt is the sum of the means of every
  ``*_tokens`` field but ``output_tokens`` (``input_tokens``; for multimodal models
  ``text_tokens + image_tokens + audio_tokens + video_tokens``, taken as per-request totals).
  Clients without a dataset do not count towards the mean; windows with no length information
  at all (language models: their datasets are not in the public snapshot) get the defaults.

The fitted family and its parameters are not used: the CV carries the burstiness that
:func:`~fleetpilot.core.series.synthesise` reproduces.  A derived ``_aggregate_rate.csv``
(``timestamp_s,total_rate_rps,active_clients``) or a single client's trace file loads too;
the former has no CV, so its windows get 1.0 (Poisson).
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import re
from dataclasses import dataclass, field
from itertools import pairwise
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
)

__all__ = ["load_servegen"]

_CHUNK = re.compile(r"chunk-(\d+)-trace\.csv")
_WINDOW_S = 600.0  # ServeGen's window, for a file with a single one
_PAIR = re.compile(r"([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)")


@dataclass
class _Window:
    rate: float = 0.0
    rate_cv2: float = 0.0
    rate_known: float = 0.0  # rate of the clients whose lengths are known
    prompt: float = 0.0  # sum of rate * mean prompt tokens
    output: float = 0.0


@dataclass
class _Lengths:
    """One client's mean lengths per dataset window (sorted by window start)."""

    starts: list[float] = field(default_factory=list)
    prompt: list[float] = field(default_factory=list)
    output: list[float] = field(default_factory=list)

    def at(self, t: float) -> tuple[float, float] | None:
        if not self.starts:
            return None
        i = max(bisect.bisect_right(self.starts, t) - 1, 0)
        return self.prompt[i], self.output[i]


def load_servegen(
    path: Path | str,
    *,
    mean_prompt_tokens: float = DEFAULT_MEAN_PROMPT_TOKENS,
    mean_output_tokens: float = DEFAULT_MEAN_OUTPUT_TOKENS,
) -> RateSeries:
    """One model's traffic from a ServeGen model folder (or one of its CSV files).

    ``mean_prompt_tokens`` / ``mean_output_tokens`` fill windows without length information.
    """
    path = Path(path)
    defaults = (mean_prompt_tokens, mean_output_tokens)
    if path.is_dir():
        files = sorted(
            (int(m.group(1)), p)
            for p in path.iterdir()
            if (m := _CHUNK.fullmatch(p.name)) is not None
        )
        if not files:
            raise ConfigError(
                f"{path}: no chunk-<client>-trace.csv files; expected a ServeGen model folder "
                "such as alibaba-servegen/language/m-large"
            )
        windows: dict[float, _Window] = {}
        slots: _Slots = {}
        for _, file in files:
            _add_client(file, windows, slots)
        return _series(windows, defaults, path)
    with open_text(path) as f, reading(path):
        first_line = f.readline()
    if "total_rate_rps" in first_line:
        return _aggregate(path, defaults)
    windows = {}
    _add_client(path, windows, {})
    return _series(windows, defaults, path)


_Slots = dict[str, tuple[float, _Window]]  # window by the files' spelling of its start


def _add_client(path: Path, windows: dict[float, _Window], slots: _Slots) -> None:
    dataset = path.with_name(path.name.replace("-trace.csv", "-dataset.json"))
    lengths = _lengths(dataset) if dataset != path and dataset.exists() else _Lengths()
    with open_text(path) as f, reading(path):
        reader = csv.reader(f)
        for row in reader:
            if not row:
                continue
            if len(row) < 3:
                raise ConfigError(
                    f"{path}:{reader.line_num}: expected 'window start,rate,cv,family,p1,p2', "
                    f"got {row!r}"
                )
            slot = slots.get(row[0])
            if slot is None:
                t = to_float(row[0], path, reader.line_num, "window start")
                slot = slots[row[0]] = (t, windows.setdefault(t, _Window()))
            if row[1] == "0":
                continue
            try:
                rate, cv = float(row[1]), float(row[2])
            except ValueError:
                rate = cv = math.nan
            if not (0.0 <= rate < math.inf and 0.0 <= cv < math.inf):  # slow path: say which
                to_float(row[1], path, reader.line_num, "rate")
                to_float(row[2], path, reader.line_num, "cv")
            if rate == 0:
                continue
            t, window = slot
            window.rate += rate
            window.rate_cv2 += rate * cv * cv
            known = lengths.at(t)
            if known is not None:
                window.rate_known += rate
                window.prompt += rate * known[0]
                window.output += rate * known[1]


def _lengths(path: Path) -> _Lengths:
    try:
        with open_text(path) as f, reading(path):
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {{window start: {{field: distribution}}}}")
    out = _Lengths()
    for key, fields in sorted(data.items(), key=lambda kv: _window_key(kv[0], path)):
        if not isinstance(fields, dict):
            raise ConfigError(f"{path}: window {key}: expected {{field: distribution}}")
        output: float | None = None
        prompt: float | None = None
        for name, pdf in fields.items():
            if name == "output_tokens":
                output = _mean(pdf, path, key, name)
            elif name.endswith("_tokens") and (mean := _mean(pdf, path, key, name)) is not None:
                prompt = (prompt or 0.0) + mean
        if output and prompt:  # known and positive
            out.starts.append(_window_key(key, path))
            out.prompt.append(prompt)
            out.output.append(output)
    return out


def _window_key(key: str, path: Path) -> float:
    try:
        value = float(key)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{path}: window key {key!r} is not a number of seconds")
    return value


def _mean(pdf: object, path: Path, key: str, name: str) -> float | None:
    """The mean of a distribution written as a Python dict literal ``"{value: prob, ...}"``;
    ``None`` for ``"{}"`` (no requests in that window)."""
    if isinstance(pdf, str) and pdf.replace(" ", "") == "{}":
        return None
    pairs = _PAIR.findall(pdf) if isinstance(pdf, str) and pdf.lstrip().startswith("{") else []
    try:
        values = [(float(v), float(p)) for v, p in pairs]
    except ValueError:
        values = []
    total = math.fsum(p for _, p in values)
    if not values or not total > 0:
        raise ConfigError(
            f"{path}: window {key}, {name}: expected a distribution '{{value: probability, ...}}'"
        )
    return math.fsum(v * p for v, p in values) / total


def _series(windows: dict[float, _Window], defaults: tuple[float, float], path: Path) -> RateSeries:
    if not windows:
        raise ConfigError(f"{path}: no windows")
    starts = sorted(windows)
    step = min((b - a for a, b in pairwise(starts)), default=_WINDOW_S)
    first = starts[0]
    n = round((starts[-1] - first) / step) + 1
    for t in starts:
        k = (t - first) / step
        if abs(k - round(k)) > 1e-6:
            raise ConfigError(
                f"{path}: window start {t:g} is not on the {step:g}-s grid that starts at {first:g}"
            )
    rps = [0.0] * n
    cv = [1.0] * n
    prompt = [defaults[0]] * n
    output = [defaults[1]] * n
    for t, w in windows.items():
        i = round((t - first) / step)
        rps[i] = w.rate
        if w.rate > 0:
            cv[i] = math.sqrt(w.rate_cv2 / w.rate)
        if w.rate_known > 0:
            prompt[i] = w.prompt / w.rate_known
            output[i] = w.output / w.rate_known
    return RateSeries(step, tuple(rps), tuple(prompt), tuple(output), tuple(cv), start_s=first)


def _aggregate(path: Path, defaults: tuple[float, float]) -> RateSeries:
    windows: dict[float, _Window] = {}
    with open_text(path) as f, reading(path):
        reader = csv.reader(f)
        cols = header_columns(next(reader, None), ("timestamp_s", "total_rate_rps"), path)
        ts, rate_col = cols["timestamp_s"], cols["total_rate_rps"]
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) <= max(ts, rate_col):
                raise ConfigError(f"{path}:{line}: expected timestamp_s,total_rate_rps,...")
            t = to_float(row[ts], path, line, "timestamp_s")
            rate = to_float(row[rate_col], path, line, "total_rate_rps")
            windows[t] = _Window(rate=rate, rate_cv2=rate)
    return _series(windows, defaults, path)
