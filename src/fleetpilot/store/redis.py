"""The Store on Redis: many gateway replicas.  Each primitive is one Lua script, so one round
trip and atomic; windows and hold expiries use Redis's own clock (``TIME`` inside the script),
never a gateway's.  Numbers travel as strings (Lua numbers would come back truncated).

Keys live under ``fp:``: a counter ``c`` is the hash ``fp:c:{c}`` (``base``, ``held``,
``wend``; a sliding one also ``slide``, ``s:<i>`` per slice, their sum ``stot`` and the
oldest ``sold``) with its holds in ``fp:h:{c}``
(amounts) and ``fp:e:{c}`` (expiries, a sorted set); a windowed counter's keys expire with
the window.  Durability of logs is Redis's: run
it with ``appendonly yes`` where a log must survive a Redis restart.  The busiest scripts
(add, commit) take their arguments as one JSON string and name their keys themselves:
packing a command's arguments is most of redis-py's cost per command, and it is one Redis
(or a replicated primary), not a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeout

from fleetpilot.store.base import Add, Added, Entry, Settle, StoreUnavailable
from fleetpilot.store.counter import SLICES

__all__ = ["RedisStore"]

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local SLICES = @SLICES@
local function num(v) return tonumber(v or '') end
local function fmt(x) return string.format('%.17g', x) end
local function slice(slide) return math.floor(now * SLICES / slide) end
local FIELDS = {'base', 'held', 'wend', 'slide', 'sold', 'stot', 'exp'}

-- A counter is read with one HMGET, worked on in a Lua table, and written back with one
-- HSET of the fields that changed (save).  A sliding window's slices are fields s:<i>,
-- with their sum in stot and the oldest index in sold, so a call touches only the slices
-- that just left the window.  exp is the expiry set on the counter's keys.
local function tidy_slices(c)
  if not c.sold then return end
  local cur = slice(c.slide)
  local keep = cur - SLICES
  if c.sold >= keep then return end
  local gone, first = 0, nil
  if keep - c.sold > 2 * SLICES then  -- idle for long (a hold kept the key): sweep it whole
    local all = redis.call('HGETALL', c.k)
    local left = 0
    for j = 1, #all, 2 do
      if string.sub(all[j], 1, 2) == 's:' then
        local i = tonumber(string.sub(all[j], 3))
        if i < keep then redis.call('HDEL', c.k, all[j]) else
          left = left + tonumber(all[j + 1])
          if first == nil or i < first then first = i end
        end
      end
    end
    c.stot = left
  else
    for i = c.sold, keep - 1 do
      local a = num(redis.call('HGET', c.k, 's:' .. i))
      if a then gone = gone + a; redis.call('HDEL', c.k, 's:' .. i) end
    end
    local i = keep
    while i <= cur and redis.call('HEXISTS', c.k, 's:' .. i) == 0 do i = i + 1 end
    if i <= cur then first = i end
    c.stot = c.stot - gone
  end
  c.sold = first
  if first == nil then c.stot = 0 end
  c.dirty.sold, c.dirty.stot = true, true
end

local function load(name)
  local c = {k = 'fp:c:' .. name, h = 'fp:h:' .. name, e = 'fp:e:' .. name, dirty = {}}
  local f = redis.call('HMGET', c.k, unpack(FIELDS))
  c.base, c.held, c.wend = num(f[1]) or 0, num(f[2]) or 0, num(f[3])
  c.slide, c.sold, c.stot, c.exp = num(f[4]), num(f[5]), num(f[6]) or 0, num(f[7])
  if c.wend and now >= c.wend then  -- a fixed window is over: start again
    redis.call('DEL', c.k, c.h, c.e)
    c.base, c.held, c.wend, c.slide, c.sold, c.stot, c.exp = 0, 0, nil, nil, nil, 0, nil
  end
  if c.slide then tidy_slices(c) end
  local gone = redis.call('ZRANGEBYSCORE', c.e, '-inf', now)
  if #gone > 0 then
    for _, a in ipairs(redis.call('HMGET', c.h, unpack(gone))) do
      c.held = c.held - (num(a) or 0)
    end
    redis.call('HDEL', c.h, unpack(gone))
    redis.call('ZREMRANGEBYSCORE', c.e, '-inf', now)
    c.dirty.held = true
  end
  return c
end

local function save(c)
  local set, del = {}, {}
  for _, f in ipairs(FIELDS) do
    if c.dirty[f] then
      if c[f] == nil then del[#del + 1] = f else
        set[#set + 1] = f
        set[#set + 1] = fmt(c[f])
      end
    end
  end
  if #set > 0 then redis.call('HSET', c.k, unpack(set)) end
  if #del > 0 then redis.call('HDEL', c.k, unpack(del)) end
  c.dirty = {}
end

local function value(c) return c.base + c.held + c.stot end

local function resets(c)
  if c.slide then
    if not c.sold then return '0' end
    return fmt(math.max(0, (c.sold + SLICES + 1) * c.slide / SLICES - now))
  end
  if c.wend then return fmt(math.max(0, c.wend - now)) end
  return ''
end

local function count(c, amount)
  if c.slide then
    local i = slice(c.slide)
    redis.call('HINCRBYFLOAT', c.k, 's:' .. i, amount)
    c.stot = c.stot + amount
    c.dirty.stot = true
    if not c.sold or i < c.sold then c.sold = i; c.dirty.sold = true end
  else
    c.base = c.base + amount
    c.dirty.base = true
  end
end

local function drop_hold(c, hold)
  local a = num(redis.call('HGET', c.h, hold))
  if a then
    redis.call('HDEL', c.h, hold)
    redis.call('ZREM', c.e, hold)
    c.held = c.held - a
    c.dirty.held = true
  end
end

-- the counter's keys live until ``at`` (s) at least; an expiry only ever moves on, and is
-- pushed a window further than needed so that most calls leave it alone
local function expire_from(c, at, slack)
  if c.exp and c.exp >= at then return end
  local when = math.floor((at + slack) * 1000)
  redis.call('PEXPIREAT', c.k, when)
  redis.call('PEXPIREAT', c.h, when)
  redis.call('PEXPIREAT', c.e, when)
  c.exp = (at + slack)
  c.dirty.exp = true
end
""".replace("@SLICES@", str(SLICES))

_ADD = (
    _PRELUDE
    + """
local spec = cjson.decode(ARGV[1])
local n = #spec
local C = {}
local byname = {}
for i = 1, n do
  local name = spec[i][1]
  if not byname[name] then byname[name] = load(name) end
  C[i] = byname[name]
end
local function opt(v) if v == cjson.null then return nil end return v end
local function report(ok, refused)
  local vals, rs = {}, {}
  for j = 1, n do vals[j] = fmt(value(C[j])); rs[j] = resets(C[j]) end
  return {ok, refused, vals, rs}
end
local pending = {}
for i = 1, n do
  local c, amount, limit = C[i], spec[i][2], opt(spec[i][3])
  local after = value(c) + (pending[c.k] or 0) + amount
  if limit and amount > 0 and after > limit + 1e-9 then
    for _, x in pairs(byname) do save(x) end  -- what tidying changed
    return report(0, i - 1)
  end
  pending[c.k] = (pending[c.k] or 0) + amount
end
for i = 1, n do
  local c = C[i]
  local amount, window, hold, ttl = spec[i][2], opt(spec[i][4]), opt(spec[i][5]), opt(spec[i][6])
  local sliding = spec[i][7]
  if sliding and not c.slide then c.slide = window; c.dirty.slide = true end
  if hold then
    local prev = num(redis.call('HGET', c.h, hold)) or 0
    redis.call('HSET', c.h, hold, fmt(prev + amount))
    redis.call('ZADD', c.e, now + ttl, hold)
    c.held = c.held + amount
    c.dirty.held = true
    if c.exp then  -- the hold's keys (maybe new) live exactly as long as the counter's
      expire_from(c, now + ttl + 1, sliding and window or 0)
      local when = math.floor(c.exp * 1000)
      redis.call('PEXPIREAT', c.h, when)
      redis.call('PEXPIREAT', c.e, when)
    end
  else
    count(c, amount)
  end
  if sliding then
    local need = now + window * (1 + 2 / SLICES) + 1
    if hold then need = math.max(need, now + ttl + 1) end
    expire_from(c, need, window)
  elseif window and not c.wend then
    c.wend = now + window
    c.dirty.wend = true
    expire_from(c, c.wend + 1, 0)
  end
end
for _, x in pairs(byname) do save(x) end
return report(1, -1)
"""
)

_SETTLE = (
    _PRELUDE
    + """
local c = load(ARGV[1])
drop_hold(c, ARGV[2])
local amount = tonumber(ARGV[3])
if amount ~= 0 then count(c, amount) end
save(c)
return fmt(value(c))
"""
)

_COMMIT = (
    _PRELUDE
    + """
local spec = cjson.decode(ARGV[1])
local entry, log = ARGV[2], ARGV[4]
if entry ~= '' and redis.call('HEXISTS', 'fp:li:' .. log, entry) == 1 then return 0 end
local byname = {}
for i = 1, #spec do
  local name = spec[i][1]
  local c = byname[name]
  if not c then c = load(name); byname[name] = c end
  drop_hold(c, spec[i][2])
  local amount = spec[i][3]
  if amount ~= 0 then count(c, amount) end
end
for _, c in pairs(byname) do save(c) end
if entry ~= '' then
  local seq = redis.call('RPUSH', 'fp:l:' .. log, ARGV[3])
  redis.call('HSET', 'fp:li:' .. log, entry, seq)
end
return 1
"""
)

_VALUE = (
    _PRELUDE
    + """
local c = load(ARGV[1])
save(c)
return fmt(value(c))
"""
)

_NOW = _PRELUDE + "return tostring(now)"

_APPEND = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local seq = redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], seq)
return 1
"""

_PUT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
if current ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ver', current + 1)
return 1
"""

_LEASE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_UNLEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class _Batcher:
    """Every command issued in one turn of the event loop goes to Redis as one pipeline.

    redis-py spends about 0.1 ms of CPU on each command it sends alone and under 0.01 ms on
    each in a pipeline, so a gateway that admits and settles hundreds of requests at once
    would spend its core on the client library.  A command waits at most for the loop's
    current turn to end (nothing at concurrency 1); commands issued while a pipeline is in
    flight form the next one, on another connection.
    """

    def __init__(self, r: aioredis.Redis, url: str, scripts: dict[str, str], limit: int = 32):
        self._r = r
        self._url = url
        self._scripts = scripts  # sha -> source, loaded again after NOSCRIPT
        self._limit = limit
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, *command: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((command, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[: self._limit], self._pending[self._limit :]
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self._r.pipeline(transaction=False)
        for c in commands:
            pipe.execute_command(*c)
        return list(await pipe.execute(raise_on_error=False))

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        commands = [c for c, _ in batch]
        try:
            results = await self._run(commands)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:  # a restarted Redis has forgotten the scripts: load them, send again
                for source in self._scripts.values():
                    await self._r.script_load(source)
                again = await self._run([commands[i] for i in missing])
                for i, r in zip(missing, again, strict=True):
                    results[i] = r
        except (RedisConnectionError, RedisTimeout, OSError) as exc:
            err = StoreUnavailable(f"Redis at {self._url} is unreachable: {exc}")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        except BaseException as exc:  # cancelled with the loop, or a bug: nobody waits forever
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            raise
        for (_, fut), r in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(r, Exception):
                fut.set_exception(r)
            else:
                fut.set_result(r)


class RedisStore:
    def __init__(self, url: str, *, timeout_s: float = 2.0, connections: int = 64) -> None:
        """``connections`` bounds this process's sockets to Redis; a pipeline waits (up to
        ``timeout_s``) for a free one."""
        self.url = url
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self._r = aioredis.Redis(connection_pool=pool)
        sources = (_ADD, _SETTLE, _VALUE, _COMMIT, _NOW, _APPEND, _PUT, _LEASE, _UNLEASE)
        shas = {src: hashlib.sha1(src.encode()).hexdigest() for src in sources}
        self._add, self._settle, self._value, self._commit = (shas[x] for x in sources[:4])
        self._now, self._append, self._put = (shas[x] for x in sources[4:7])
        self._lease, self._unlease = shas[_LEASE], shas[_UNLEASE]
        self._batch = _Batcher(self._r, url, {sha: src for src, sha in shas.items()})

    async def _call(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        return await self._batch.submit("EVALSHA", sha, len(keys), *keys, *args)

    async def _do(self, *command: Any) -> Any:
        return await self._batch.submit(*command)

    async def now(self) -> float:
        return float(await self._call(self._now, [], []))

    async def add(self, *adds: Add) -> Added:
        spec = [
            [a.key, float(a.amount), a.limit, a.window_s, a.hold, a.hold_ttl_s, a.sliding]
            for a in adds
        ]
        ok, refused, values, resets = await self._call(self._add, [], [json.dumps(spec)])
        return Added(
            bool(ok),
            tuple(float(v) for v in values),
            tuple(float(r) if r not in (b"", "") else None for r in resets),
            refused=None if int(refused) < 0 else int(refused),
        )

    async def commit(self, settles: tuple[Settle, ...], entry: Entry | None = None) -> bool:
        spec = json.dumps([[st.key, st.hold, float(st.amount)] for st in settles])
        if entry is None:
            args = [spec, "", "", ""]
        else:
            args = [spec, entry.id, json.dumps([entry.id, entry.record]), entry.log]
        return bool(await self._call(self._commit, [], args))

    async def settle(self, key: str, hold: str, amount: float) -> float:
        return float(await self._call(self._settle, [], [key, hold, repr(float(amount))]))

    async def release(self, key: str, hold: str) -> float:
        return float(await self._call(self._settle, [], [key, hold, "0"]))

    async def value(self, key: str) -> float:
        return float(await self._call(self._value, [], [key]))

    async def append(self, log: str, entry_id: str, record: dict[str, Any]) -> bool:
        data = json.dumps([entry_id, record])
        keys = [f"fp:li:{log}", f"fp:l:{log}"]
        return bool(await self._call(self._append, keys, [entry_id, data]))

    async def read(
        self, log: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, dict[str, Any]]]:
        start = max(after, 0)
        rows = await self._do("LRANGE", f"fp:l:{log}", start, start + limit - 1)
        out = []
        for i, raw in enumerate(rows):
            entry_id, record = json.loads(raw)
            out.append((start + i + 1, str(entry_id), record))
        return out

    async def get(self, key: str) -> tuple[bytes | None, int]:
        value, version = await self._do("HMGET", f"fp:kv:{key}", "v", "ver")
        if version is None or value is None:
            return None, 0
        return (value.encode() if isinstance(value, str) else bytes(value)), int(version)

    async def put(self, key: str, value: bytes, *, version: int) -> bool:
        return bool(await self._call(self._put, [f"fp:kv:{key}"], [bytes(value), version]))

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        ms = max(1, round(ttl_s * 1000))
        return bool(await self._call(self._lease, [f"fp:lease:{name}"], [holder, ms]))

    async def unlease(self, name: str, holder: str) -> None:
        await self._call(self._unlease, [f"fp:lease:{name}"], [holder])

    async def close(self) -> None:
        await self._r.aclose()
        await self._r.connection_pool.disconnect()
