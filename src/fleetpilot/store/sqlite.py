"""The Store in one SQLite file (WAL): the embedded default, shared by every process on one
machine.  Each primitive is one ``BEGIN IMMEDIATE`` transaction, so two gateways writing
the same counter take turns; the clock is the machine's wall clock, which they share."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fleetpilot.clock import Clock, WallClock
from fleetpilot.store.base import Add, Added, Entry, Settle, StoreUnavailable
from fleetpilot.store.counter import Counter, apply_all, settle_all

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, base REAL NOT NULL, window_end REAL,
    slide REAL, slices TEXT);
CREATE TABLE IF NOT EXISTS holds (key TEXT NOT NULL, hold TEXT NOT NULL, amount REAL NOT NULL,
    expiry REAL NOT NULL, PRIMARY KEY (key, hold));
CREATE TABLE IF NOT EXISTS logs (log TEXT NOT NULL, seq INTEGER NOT NULL, entry_id TEXT NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (log, seq), UNIQUE (log, entry_id));
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
    expiry REAL NOT NULL);
"""


class SqliteStore:
    def __init__(self, path: str | Path, clock: Clock | None = None) -> None:
        self.path = str(path)
        self.clock = clock or WallClock()
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {self.path}: {exc}") from exc

    async def _run(self, fn: Callable[[sqlite3.Connection, float], T]) -> T:
        def tx() -> T:
            with self._lock:
                db = self._db
                try:
                    db.execute("BEGIN IMMEDIATE")
                    out = fn(db, self.clock.now())
                    db.execute("COMMIT")
                    return out
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise

        try:
            return await asyncio.to_thread(tx)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the SQLite store {self.path}: {exc}") from exc

    async def now(self) -> float:
        return self.clock.now()

    # -- counters -------------------------------------------------------------------------
    @staticmethod
    def _load(db: sqlite3.Connection, key: str, now: float) -> Counter:
        row = db.execute(
            "SELECT base, window_end, slide, slices FROM counters WHERE key = ?", (key,)
        ).fetchone()
        c = Counter()
        if row is not None:
            c.base, c.window_end, c.slide = row[0], row[1], row[2]
            c.slices = {int(i): v for i, v in json.loads(row[3] or "{}").items()}
        for hold, amount, expiry in db.execute(
            "SELECT hold, amount, expiry FROM holds WHERE key = ?", (key,)
        ):
            c.holds[hold] = (amount, expiry)
        c.tidy(now)
        return c

    @staticmethod
    def _save(db: sqlite3.Connection, key: str, c: Counter) -> None:
        db.execute(
            "INSERT INTO counters (key, base, window_end, slide, slices) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET base = excluded.base, "
            "window_end = excluded.window_end, slide = excluded.slide, slices = excluded.slices",
            (key, c.base, c.window_end, c.slide, json.dumps(c.slices) if c.slices else None),
        )
        db.execute("DELETE FROM holds WHERE key = ?", (key,))
        db.executemany(
            "INSERT INTO holds (key, hold, amount, expiry) VALUES (?, ?, ?, ?)",
            [(key, h, amount, expiry) for h, (amount, expiry) in c.holds.items()],
        )

    async def add(self, *adds: Add) -> Added:
        def fn(db: sqlite3.Connection, now: float) -> Added:
            counters = {a.key: self._load(db, a.key, now) for a in adds}
            result = apply_all(counters, adds, now)
            if result.ok:
                for key, c in counters.items():
                    self._save(db, key, c)
            return result

        return await self._run(fn)

    async def commit(self, settles: tuple[Settle, ...], entry: Entry | None = None) -> bool:
        text = None if entry is None else json.dumps(entry.record)

        def fn(db: sqlite3.Connection, now: float) -> bool:
            if entry is not None and self._seen(db, entry.log, entry.id):
                return False
            counters = {s.key: self._load(db, s.key, now) for s in settles}
            settle_all(counters, settles, now)
            for key, c in counters.items():
                self._save(db, key, c)
            if entry is not None and text is not None:
                self._insert(db, entry.log, entry.id, text)
            return True

        return await self._run(fn)

    async def settle(self, key: str, hold: str, amount: float) -> float:
        def fn(db: sqlite3.Connection, now: float) -> float:
            c = self._load(db, key, now)
            c.settle(hold, amount, now)
            self._save(db, key, c)
            return c.value()

        return await self._run(fn)

    async def release(self, key: str, hold: str) -> float:
        return await self.settle(key, hold, 0.0)

    async def value(self, key: str) -> float:
        return await self._run(lambda db, now: self._load(db, key, now).value())

    # -- logs -----------------------------------------------------------------------------
    @staticmethod
    def _seen(db: sqlite3.Connection, log: str, entry_id: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM logs WHERE log = ? AND entry_id = ?", (log, entry_id)
        ).fetchone()
        return row is not None

    @staticmethod
    def _insert(db: sqlite3.Connection, log: str, entry_id: str, text: str) -> None:
        (last,) = db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM logs WHERE log = ?", (log,)
        ).fetchone()
        db.execute(
            "INSERT INTO logs (log, seq, entry_id, record) VALUES (?, ?, ?, ?)",
            (log, last + 1, entry_id, text),
        )

    async def append(self, log: str, entry_id: str, record: dict[str, Any]) -> bool:
        text = json.dumps(record)

        def fn(db: sqlite3.Connection, now: float) -> bool:
            if self._seen(db, log, entry_id):
                return False
            self._insert(db, log, entry_id, text)
            return True

        return await self._run(fn)

    async def read(
        self, log: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, dict[str, Any]]]:
        def fn(db: sqlite3.Connection, now: float) -> list[tuple[int, str, dict[str, Any]]]:
            rows = db.execute(
                "SELECT seq, entry_id, record FROM logs WHERE log = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (log, after, limit),
            ).fetchall()
            return [(seq, i, json.loads(r)) for seq, i, r in rows]

        return await self._run(fn)

    # -- compare-and-set ------------------------------------------------------------------
    async def get(self, key: str) -> tuple[bytes | None, int]:
        def fn(db: sqlite3.Connection, now: float) -> tuple[bytes | None, int]:
            row = db.execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
            return (None, 0) if row is None else (bytes(row[0]), int(row[1]))

        return await self._run(fn)

    async def put(self, key: str, value: bytes, *, version: int) -> bool:
        def fn(db: sqlite3.Connection, now: float) -> bool:
            row = db.execute("SELECT version FROM kv WHERE key = ?", (key,)).fetchone()
            if (0 if row is None else int(row[0])) != version:
                return False
            db.execute(
                "INSERT INTO kv (key, value, version) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, version = excluded.version",
                (key, bytes(value), version + 1),
            )
            return True

        return await self._run(fn)

    # -- leases ---------------------------------------------------------------------------
    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        def fn(db: sqlite3.Connection, now: float) -> bool:
            row = db.execute("SELECT holder, expiry FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            db.execute(
                "INSERT INTO leases (name, holder, expiry) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET holder = excluded.holder, expiry = excluded.expiry",
                (name, holder, now + ttl_s),
            )
            return True

        return await self._run(fn)

    async def unlease(self, name: str, holder: str) -> None:
        def fn(db: sqlite3.Connection, now: float) -> None:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._run(fn)

    async def close(self) -> None:
        with self._lock:
            self._db.close()
