"""Shared state behind one seam (:class:`~fleetpilot.store.base.Store`), three backends,
chosen by one URL: ``memory://`` (tests, the simulator), ``sqlite:///path/to/file.db`` (one
machine; the embedded default) and ``redis://host:port/db`` (many gateway replicas)."""

from __future__ import annotations

from urllib.parse import urlsplit

from fleetpilot.clock import Clock
from fleetpilot.errors import ConfigError
from fleetpilot.store.base import Add, Added, Entry, Settle, Store, StoreUnavailable
from fleetpilot.store.memory import MemoryStore

__all__ = [
    "Add",
    "Added",
    "Entry",
    "MemoryStore",
    "Settle",
    "Store",
    "StoreUnavailable",
    "open_store",
]


def open_store(url: str, clock: Clock | None = None) -> Store:
    """The store ``url`` names; ``clock`` is the memory store's (the others keep their own)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(clock)
    if scheme == "sqlite":
        from fleetpilot.store.sqlite import SqliteStore

        path = url.removeprefix("sqlite://")  # sqlite:///abs/file.db or sqlite://rel/file.db
        if not path or path == "/":
            raise ConfigError(
                f"a SQLite store needs a file: sqlite:///path/to/file.db, not {url!r}"
            )
        return SqliteStore(path)
    if scheme in ("redis", "rediss", "unix"):
        from fleetpilot.store.redis import RedisStore

        return RedisStore(url)
    raise ConfigError(
        f"unknown store {url!r}: use memory://, sqlite:///FILE or redis://HOST:PORT/DB"
    )
