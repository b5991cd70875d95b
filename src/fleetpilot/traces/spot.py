"""SkyPilot spot traces (also the SpotHedge artifact's): instances available or alive per tick.

``{"metadata": {"gap_seconds": G}, "data": [n_0, n_1, ...]}``: ``data[i]`` is how many spot
instances were available (availability traces: could a request be fulfilled) or still running
(pre-emption traces: drops are pre-emptions) during tick ``i``, which lasts ``G`` seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from fleetpilot.core.series import SpotMarket
from fleetpilot.errors import ConfigError
from fleetpilot.traces._files import open_text, reading

__all__ = ["SpotFeed", "SpotMap", "load_spot_map", "load_spot_market"]

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


# ---------------------------------------------------------------------------------------------
# Spot maps: which offering each trace describes


@dataclass(frozen=True, slots=True)
class SpotFeed:
    """One trace and the offering it describes: the spot pools of ``accelerator``, one zone
    of them (``zone``, 0-based) or the whole pool (``None``).  ``counts`` says what a count
    is: ``instances`` (that many instances, each holding ``replicas_per_instance`` replicas)
    or ``open`` (0 or 1: the market takes requests or not, no bound on how many)."""

    market: SpotMarket
    accelerator: str
    zone: int | None
    counts: str
    replicas_per_instance: int
    source: str
    loop: bool = False  # a run past the trace's end repeats it (else that is an error)


@dataclass(frozen=True, slots=True)
class SpotMap:
    """The spot traces of a run (one map file, or several merged)."""

    feeds: tuple[SpotFeed, ...]
    source: str = ""

    def merged(self, other: SpotMap) -> SpotMap:
        """Both maps' traces; an offering (accelerator, zone) described twice is an error."""
        _no_overlap(self.feeds + other.feeds, f"{self.source} + {other.source}")
        return SpotMap(self.feeds + other.feeds, f"{self.source}, {other.source}")


_MAP_SHAPE = (
    "a spot map: {loop: false, traces: [{file: PATH, accelerator: A100, zone: 0, "
    "counts: instances|open, replicas_per_instance: 1, gap_seconds: 300}]}"
)
_FEED_KEYS = {"file", "accelerator", "zone", "counts", "replicas_per_instance", "gap_seconds"}


def load_spot_map(path: Path | str, *, data_dir: str | Path | None = None) -> SpotMap:
    """A spot map from YAML (see :class:`SpotFeed`).  A trace's ``file`` is read relative to
    the map, else under ``data_dir`` (default: the ``FLEETPILOT_DATA`` folder)."""
    path = Path(path)
    if path.suffix == ".json":
        raise ConfigError(
            f"{path}: a bare spot trace does not say what it describes (which accelerator, "
            f"zone, node size); write {_MAP_SHAPE}"
        )
    try:
        with open_text(path) as f, reading(path):
            doc = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("traces"), list) or not doc["traces"]:
        raise ConfigError(f"{path}: expected {_MAP_SHAPE}")
    unknown = sorted(set(doc) - {"loop", "traces"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; expected {_MAP_SHAPE}")
    loop = doc.get("loop", False)
    if not isinstance(loop, bool):
        raise ConfigError(f"{path}: loop must be true or false, not {loop!r}")
    root = data_dir if data_dir is not None else os.environ.get("FLEETPILOT_DATA")
    feeds = tuple(
        dataclasses.replace(_feed(path, i, entry, root), loop=loop)
        for i, entry in enumerate(doc["traces"])
    )
    _no_overlap(feeds, str(path))
    return SpotMap(feeds, str(path))


def _no_overlap(feeds: tuple[SpotFeed, ...], where: str) -> None:
    seen: set[tuple[str, int | None]] = set()
    for feed in feeds:
        mine = {z for a, z in seen if a == feed.accelerator}
        if feed.zone in mine or (mine and (feed.zone is None or None in mine)):
            raise ConfigError(
                f"{where}: {feed.accelerator} zone {feed.zone} is described twice (a pool takes "
                "one whole-pool trace or one trace per zone)"
            )
        seen.add((feed.accelerator, feed.zone))


def _feed(path: Path, i: int, entry: object, root: str | Path | None) -> SpotFeed:
    where = f"{path}: traces[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping; {_MAP_SHAPE}")
    unknown = sorted(set(entry) - _FEED_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(_FEED_KEYS)}")
    for key in ("file", "accelerator", "counts"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{where}: {key} is required (a string)")
    counts = entry["counts"]
    if counts not in ("instances", "open"):
        raise ConfigError(f"{where}: counts must be 'instances' or 'open', not {counts!r}")
    zone = entry.get("zone")
    if zone is not None and (isinstance(zone, bool) or not isinstance(zone, int) or zone < 0):
        raise ConfigError(f"{where}: zone must be a whole number >= 0, not {zone!r}")
    per = entry.get("replicas_per_instance", 1)
    if isinstance(per, bool) or not isinstance(per, int) or per < 1:
        raise ConfigError(f"{where}: replicas_per_instance must be a whole number >= 1")
    if counts == "open" and "replicas_per_instance" in entry:
        raise ConfigError(
            f"{where}: an 'open' trace counts no instances: drop replicas_per_instance"
        )
    gap = entry.get("gap_seconds")
    if gap is not None and (isinstance(gap, bool) or not isinstance(gap, int | float)):
        raise ConfigError(f"{where}: gap_seconds must be a number")
    file = Path(entry["file"])
    if not file.is_absolute():
        near = path.parent / file
        file = near if near.exists() or root is None else Path(root) / file
    market = load_spot_market(file, gap_s=None if gap is None else float(gap))
    if counts == "open" and max(market.capacity, default=0) > 1:
        raise ConfigError(
            f"{where}: {file} counts up to {max(market.capacity)}: not an 'open' (0/1) trace"
        )
    return SpotFeed(market, entry["accelerator"], zone, counts, per, str(file))
