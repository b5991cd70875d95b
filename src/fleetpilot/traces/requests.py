"""Request logs, one row per request: Azure LLM inference, Mooncake, BurstGPT.

Each loader streams its file and returns ``tuple[TraceRequest, ...]`` sorted by arrival, with
arrivals in seconds after the file's first row.  The shared options:

- ``start_s`` / ``end_s`` keep the requests that arrived in ``[start_s, end_s)`` after the first
  row and shift them so ``start_s`` becomes 0 (a slice of a trace is a trace of its own);
  reading stops at the first row past ``end_s``;
- ``limit`` keeps at most that many requests (the first ones in the range).

Rows must be in time order, as in every public trace of these formats; a row earlier than the
one before it is an error rather than a silent reordering.  Token counts below one are raised
to one (a request always has a prompt and produces at least a token).
"""

from __future__ import annotations

import csv
import json
import math
from datetime import date
from pathlib import Path

from fleetpilot.core.workload import TraceRequest
from fleetpilot.errors import ConfigError
from fleetpilot.traces._files import (
    check_range,
    header_columns,
    open_text,
    reading,
    to_float,
    to_int,
)

__all__ = ["load_azure", "load_burstgpt", "load_mooncake"]

_AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_BURSTGPT = ("Timestamp", "Request tokens", "Response tokens")


class _Collector:
    """Applies the time range, the limit and the order check to rows as they stream by."""

    def __init__(self, path: Path, limit: int | None, start_s: float, end_s: float) -> None:
        check_range(limit, start_s, end_s)
        self.path, self.limit, self.start_s, self.end_s = path, limit, start_s, end_s
        self.origin: float | None = None
        self.previous = -math.inf
        self.requests: list[TraceRequest] = []
        self.done = limit == 0

    def add(self, line: int, t: float, prompt: int, output: int, keep: bool = True) -> None:
        """Take a row at absolute time ``t`` (``keep=False``: only checks its order)."""
        if t < self.previous:
            raise ConfigError(
                f"{self.path}:{line}: rows are not in time order (this row is "
                f"{self.previous - t:.6g} s earlier than the one before)"
            )
        self.previous = t
        if self.origin is None:
            self.origin = t
        at = t - self.origin
        if at >= self.end_s:
            self.done = True
            return
        if not keep or at < self.start_s:
            return
        self.requests.append(TraceRequest(at - self.start_s, max(prompt, 1), max(output, 1)))
        if self.limit is not None and len(self.requests) >= self.limit:
            self.done = True


class _AzureClock:
    """Seconds since the first row's midnight, from ``YYYY-MM-DD HH:MM:SS.fffffff``.

    Hand-parsed: 7 fractional digits are more than ``datetime`` keeps, and days are counted
    from the first row so the sub-microsecond digits survive in a float.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.days: dict[str, int] = {}
        self.first_day: int | None = None

    def seconds(self, text: str, line: int) -> float:
        try:
            day = self.days.get(text[:10])
            if day is None:
                day = self.days[text[:10]] = date.fromisoformat(text[:10]).toordinal()
            if text[10] not in " T" or text[13] != ":" or text[16] != ":":
                raise ValueError(text)
            hours, minutes, secs = int(text[11:13]), int(text[14:16]), float(text[17:])
            if not (0 <= hours < 24 and 0 <= minutes < 60 and 0 <= secs < 61):
                raise ValueError(text)
        except (ValueError, IndexError):
            raise ConfigError(
                f"{self.path}:{line}: TIMESTAMP must look like 'YYYY-MM-DD HH:MM:SS.fffffff', "
                f"not {text!r}"
            ) from None
        if self.first_day is None:
            self.first_day = day
        return (day - self.first_day) * 86400.0 + hours * 3600.0 + minutes * 60.0 + secs


def load_azure(
    path: Path | str,
    *,
    limit: int | None = None,
    start_s: float = 0.0,
    end_s: float = math.inf,
) -> tuple[TraceRequest, ...]:
    """The Azure LLM inference trace (2023 and 2024): ``TIMESTAMP,ContextTokens,GeneratedTokens``.

    ``TIMESTAMP`` is a local date and time without zone (``2023-11-16 18:15:46.6805900``);
    ``ContextTokens`` becomes the prompt, ``GeneratedTokens`` the output length.
    """
    path = Path(path)
    out = _Collector(path, limit, start_s, end_s)
    clock = _AzureClock(path)
    with open_text(path) as f, reading(path):
        reader = csv.reader(f)
        cols = header_columns(next(reader, None), _AZURE, path)
        ts, ctx, gen = (cols[c.lower()] for c in _AZURE)
        width = max(ts, ctx, gen) + 1
        for row in reader:
            if out.done:
                break
            if not row:
                continue
            line = reader.line_num
            if len(row) < width:
                raise ConfigError(f"{path}:{line}: expected {','.join(_AZURE)}, got {row!r}")
            t = clock.seconds(row[ts], line)
            prompt = to_int(row[ctx], path, line, "ContextTokens")
            output = to_int(row[gen], path, line, "GeneratedTokens")
            out.add(line, t, prompt, output)
    return tuple(out.requests)


def load_mooncake(
    path: Path | str,
    *,
    limit: int | None = None,
    start_s: float = 0.0,
    end_s: float = math.inf,
) -> tuple[TraceRequest, ...]:
    """Mooncake (FAST'25) JSONL: ``{"timestamp": ms, "input_length", "output_length",
    "hash_ids"}`` per line.

    ``hash_ids`` (shared 512-token prefix blocks) have no place in a ``TraceRequest`` and are
    not read.
    """
    path = Path(path)
    out = _Collector(path, limit, start_s, end_s)
    with open_text(path) as f, reading(path):
        for line, text in enumerate(f, start=1):
            if out.done:
                break
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{line}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{line}: expected a JSON object, got {text.strip()!r}")
            t = _number(row, "timestamp", path, line) / 1000.0
            prompt = _count(row, "input_length", path, line)
            output = _count(row, "output_length", path, line)
            out.add(line, t, prompt, output)
    return tuple(out.requests)


def _number(row: dict[str, object], key: str, path: Path, line: int) -> float:
    value = row.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{path}:{line}: {key!r} must be a number >= 0, got {value!r}")
    return float(value)


def _count(row: dict[str, object], key: str, path: Path, line: int) -> int:
    value = _number(row, key, path, line)
    if not value.is_integer():
        raise ConfigError(f"{path}:{line}: {key!r} must be a whole number, got {row[key]!r}")
    return int(value)


def load_burstgpt(
    path: Path | str,
    *,
    limit: int | None = None,
    start_s: float = 0.0,
    end_s: float = math.inf,
    model: str | None = None,
    log_type: str | None = None,
    include_failed: bool = False,
) -> tuple[TraceRequest, ...]:
    """BurstGPT CSV: ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``
    (BurstGPT_3 adds ``Session ID,Elapsed time``; columns are found by name).

    ``Timestamp`` is seconds from the start of the trace.  ``model`` (``ChatGPT``, ``GPT-4``)
    and ``log_type`` (``Conversation log``, ``API log``) keep only matching rows; arrivals stay
    relative to the file's first row either way, so filtered streams line up.  Rows with 0
    response tokens are failed requests and are left out unless ``include_failed``.
    """
    path = Path(path)
    out = _Collector(path, limit, start_s, end_s)
    with open_text(path) as f, reading(path):
        reader = csv.reader(f)
        required = _BURSTGPT + (("Model",) if model else ()) + (("Log Type",) if log_type else ())
        cols = header_columns(next(reader, None), required, path)
        ts, req, resp = (cols[c.lower()] for c in _BURSTGPT)
        model_col, type_col = cols.get("model"), cols.get("log type")
        width = max(cols[c.lower()] for c in required) + 1
        for row in reader:
            if out.done:
                break
            if not row:
                continue
            line = reader.line_num
            if len(row) < width:
                raise ConfigError(f"{path}:{line}: expected {width} columns, got {row!r}")
            t = to_float(row[ts], path, line, "Timestamp")
            prompt = to_int(row[req], path, line, "Request tokens")
            output = to_int(row[resp], path, line, "Response tokens")
            keep = (
                (include_failed or output > 0)
                and (model is None or (model_col is not None and row[model_col] == model))
                and (log_type is None or (type_col is not None and row[type_col] == log_type))
            )
            out.add(line, t, prompt, output, keep)
    return tuple(out.requests)
