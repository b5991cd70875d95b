"""What every trace loader needs: opening files, and parsing fields into errors that say where.

Every problem with a trace file becomes a :class:`~fleetpilot.errors.ConfigError` whose message
starts with ``path:line:`` and says what was expected there.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from fleetpilot.errors import ConfigError

# Mean request shape used where a trace gives rates but no lengths: the Azure LLM inference
# 2023 conversation trace (19,366 requests; mean 1,155 prompt and 211 output tokens).
DEFAULT_MEAN_PROMPT_TOKENS = 1155.0
DEFAULT_MEAN_OUTPUT_TOKENS = 211.0


def open_text(path: Path) -> TextIO:
    """``path`` for reading as text (gunzipped if it ends in .gz); a BOM is skipped."""
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
        return path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such trace file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn undecodable bytes and malformed CSV met while reading into ``ConfigError``."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (csv.Error, EOFError, gzip.BadGzipFile) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None


def to_float(text: str, path: Path, line: int, column: str) -> float:
    """A finite, non-negative number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{path}:{line}: {column} must be a number >= 0, not {text!r}")
    return value


def to_int(text: str, path: Path, line: int, column: str) -> int:
    """A whole number >= 0 (``"12"`` or ``"12.0"``)."""
    try:
        return _whole(int(text))
    except ValueError:
        pass
    try:
        value = float(text)
        if value.is_integer():
            return _whole(int(value))
    except (ValueError, OverflowError):
        pass
    raise ConfigError(f"{path}:{line}: {column} must be a whole number >= 0, not {text!r}")


def _whole(value: int) -> int:
    if value < 0:
        raise ValueError(value)
    return value


def header_columns(
    header: Sequence[str] | None, required: Sequence[str], path: Path
) -> dict[str, int]:
    """Index of each column of the header row, by name (compared without case or spaces)."""
    if header is None:
        raise ConfigError(f"{path}: empty file; expected a header {','.join(required)}")
    index = {name.strip().lower(): i for i, name in enumerate(header)}
    missing = [name for name in required if name.lower() not in index]
    if missing:
        raise ConfigError(
            f"{path}:1: header lacks {', '.join(missing)}; expected columns "
            f"{','.join(required)}, found {','.join(h.strip() for h in header)}"
        )
    return index


def check_range(limit: int | None, start_s: float, end_s: float) -> None:
    """The options every request loader takes: ``limit`` requests within [start_s, end_s)."""
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must not be negative, not {limit}")
    if not (math.isfinite(start_s) and start_s >= 0 and end_s > start_s):
        raise ConfigError(f"time range [{start_s}, {end_s}) is empty or starts before 0")
