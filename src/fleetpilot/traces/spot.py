"""SkyPilot spot traces (also the SpotHedge artifact's): instances available or alive per tick.

``{"metadata": {"gap_seconds": G}, "data": [n_0, n_1, ...]}``: ``data[i]`` is how many spot
instances were available (availability traces: could a request be fulfilled) or still running
(pre-emption traces: drops are pre-emptions) during tick ``i``, which lasts ``G`` seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fleetpilot.core.series import SpotMarket
from fleetpilot.errors import ConfigError
from fleetpilot.traces._files import open_text, reading

__all__ = ["load_spot_market"]

_SHAPE = '{"metadata": {"gap_seconds": G}, "data": [count, ...]}'


def load_spot_market(path: Path | str, *, gap_s: float | None = None) -> SpotMarket:
    """A spot market from a trace file; ``gap_s`` overrides the tick the file states (the
    SpotHedge copy of the 2-month AWS trace says 300 s where the original says 195 s)."""
    path = Path(path)
    try:
        with open_text(path) as f, reading(path):
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(metadata, dict) or not isinstance(data, list):
        raise ConfigError(f"{path}: expected {_SHAPE}")
    if gap_s is None:
        gap = metadata.get("gap_seconds")
        if isinstance(gap, bool) or not isinstance(gap, int | float):
            raise ConfigError(f"{path}: metadata.gap_seconds must be a number, got {gap!r}")
        gap_s = float(gap)
    if not (math.isfinite(gap_s) and gap_s > 0):
        raise ConfigError(f"{path}: the tick length must be positive, not {gap_s}")
    capacity: list[int] = []
    for i, value in enumerate(data):
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = -1
        if not (value >= 0 and float(value).is_integer()):
            raise ConfigError(f"{path}: data[{i}] must be a whole number >= 0, got {data[i]!r}")
        capacity.append(int(value))
    return SpotMarket(gap_s, tuple(capacity))
