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
local function num(v) return tonumber(v or '') end
local SLICES = @SLICES@
local function slice(slide) return math.floor(now * SLICES / slide) end
-- a sliding window's slices are fields s:<i>; stot is their sum and sold the oldest index
-- that may still be there, so a call touches only the slices that just left the window
local function count(c, amount)
  local slide = num(redis.call('HGET', c, 'slide'))
  if slide then
    local i = slice(slide)
    redis.call('HINCRBYFLOAT', c, 's:' .. tostring(i), amount)
    redis.call('HINCRBYFLOAT', c, 'stot', amount)
    local old = num(redis.call('HGET', c, 'sold'))
    if not old or i < old then redis.call('HSET', c, 'sold', tostring(i)) end
  else
    redis.call('HINCRBYFLOAT', c, 'base', amount)
  end
end
local function tidy_slices(c, slide)
  local old = num(redis.call('HGET', c, 'sold'))
  if not old then return end
  local cur = slice(slide)
  local keep = cur - SLICES
  if old >= keep then return end
  if keep - old > 2 * SLICES then  -- idle for long (a hold kept the key): sweep it whole
    local all = redis.call('HGETALL', c)
    local sum, first = 0, nil
    for j = 1, #all, 2 do
      if string.sub(all[j], 1, 2) == 's:' then
        local i = tonumber(string.sub(all[j], 3))
        if i < keep then
          redis.call('HDEL', c, all[j])
        else
          sum = sum + tonumber(all[j + 1])
          if first == nil or i < first then first = i end
        end
      end
    end
    if first == nil then redis.call('HDEL', c, 'sold', 'stot') else
      redis.call('HSET', c, 'sold', tostring(first), 'stot', tostring(sum))
    end
    return
  end
  local gone = 0
  local i = old
  while i < keep do
    local a = num(redis.call('HGET', c, 's:' .. tostring(i)))
    if a then
      gone = gone + a
      redis.call('HDEL', c, 's:' .. tostring(i))
    end
    i = i + 1
  end
  while i <= cur and redis.call('HEXISTS', c, 's:' .. tostring(i)) == 0 do i = i + 1 end
  if i > cur then
    redis.call('HDEL', c, 'sold', 'stot')
  else
    redis.call('HSET', c, 'sold', tostring(i))
    redis.call('HINCRBYFLOAT', c, 'stot', -gone)
  end
end
local function tidy(c, h, e)
  local wend = num(redis.call('HGET', c, 'wend'))
  if wend and now >= wend then redis.call('DEL', c, h, e) end
  local slide = num(redis.call('HGET', c, 'slide'))
  if slide then tidy_slices(c, slide) end
  local gone = redis.call('ZRANGEBYSCORE', e, '-inf', now)
  for _, name in ipairs(gone) do
    redis.call('HINCRBYFLOAT', c, 'held', -(num(redis.call('HGET', h, name)) or 0))
    redis.call('HDEL', h, name)
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', e, '-inf', now) end
end
local function value(c)
  local f = redis.call('HMGET', c, 'base', 'held', 'stot')
  return (num(f[1]) or 0) + (num(f[2]) or 0) + (num(f[3]) or 0)
end
local function resets(c)
  local f = redis.call('HMGET', c, 'slide', 'sold', 'wend')
  local slide, old, w = num(f[1]), num(f[2]), num(f[3])
  if slide then
    if not old then return '0' end
    return tostring(math.max(0, (old + SLICES + 1) * slide / SLICES - now))
  end
  if w then return tostring(math.max(0, w - now)) end
  return ''
end
local function drop_hold(c, h, e, hold)
  local a = num(redis.call('HGET', h, hold))
  if a then
    redis.call('HDEL', h, hold)
    redis.call('ZREM', e, hold)
    redis.call('HINCRBYFLOAT', c, 'held', -a)
  end
end
local function expire_all(c, h, e, at)  -- at ``at`` (ms) or later: an expiry only moves on
  for _, k in ipairs({c, h, e}) do
    local left = redis.call('PTTL', k)
    if left == -1 or (left >= 0 and now * 1000 + left < at) then
      redis.call('PEXPIREAT', k, at)
    end
  end
end
""".replace("@SLICES@", str(SLICES))

_ADD = (
    _PRELUDE
    + """
local spec = cjson.decode(ARGV[1])
local n = #spec
local C, H, E = {}, {}, {}
for i = 1, n do
  local name = spec[i][1]
  C[i], H[i], E[i] = 'fp:c:' .. name, 'fp:h:' .. name, 'fp:e:' .. name
  tidy(C[i], H[i], E[i])
end
local function opt(v) if v == cjson.null then return nil end return v end
local function report(ok, refused)
  local vals, rs = {}, {}
  for j = 1, n do vals[j] = tostring(value(C[j])); rs[j] = resets(C[j]) end
  return {ok, refused, vals, rs}
end
local pending = {}
for i = 1, n do
  local c, amount, limit = C[i], spec[i][2], opt(spec[i][3])
  local after = value(c) + (pending[c] or 0) + amount
  if limit and amount > 0 and after > limit + 1e-9 then return report(0, i-1) end
  pending[c] = (pending[c] or 0) + amount
end
for i = 1, n do
  local c, h, e = C[i], H[i], E[i]
  local amount, window, hold, ttl = spec[i][2], opt(spec[i][4]), opt(spec[i][5]), opt(spec[i][6])
  local sliding = spec[i][7]
  if sliding and redis.call('HEXISTS', c, 'slide') == 0 then
    redis.call('HSET', c, 'slide', tostring(window))
  end
  if hold then
    local prev = num(redis.call('HGET', h, hold)) or 0
    redis.call('HSET', h, hold, tostring(prev + amount))
    redis.call('ZADD', e, now + ttl, hold)
    redis.call('HINCRBYFLOAT', c, 'held', amount)
  else
    count(c, amount)
  end
  if sliding then
    local at = math.floor((now + window * (1 + 2 / SLICES) + 1) * 1000)
    if hold then at = math.max(at, math.floor((now + ttl + 1) * 1000)) end
    expire_all(c, h, e, at)
  elseif window and not redis.call('HGET', c, 'wend') then
    local wend = now + window
    redis.call('HSET', c, 'wend', tostring(wend))
    expire_all(c, h, e, math.floor((wend + 1) * 1000))
  end
end
return report(1, -1)
"""
)

_SETTLE = (
    _PRELUDE
    + """
tidy(KEYS[1], KEYS[2], KEYS[3])
drop_hold(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
local amount = tonumber(ARGV[2])
if amount ~= 0 then count(KEYS[1], amount) end
return tostring(value(KEYS[1]))
"""
)

_COMMIT = (
    _PRELUDE
    + """
local spec = cjson.decode(ARGV[1])
local entry, log = ARGV[2], ARGV[4]
if entry ~= '' and redis.call('HEXISTS', 'fp:li:' .. log, entry) == 1 then return 0 end
for i = 1, #spec do
  local name = spec[i][1]
  local c, h, e = 'fp:c:' .. name, 'fp:h:' .. name, 'fp:e:' .. name
  tidy(c, h, e)
  drop_hold(c, h, e, spec[i][2])
  local amount = spec[i][3]
  if amount ~= 0 then count(c, amount) end
end
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
tidy(KEYS[1], KEYS[2], KEYS[3])
return tostring(value(KEYS[1]))
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


def _keys(counter: str) -> list[str]:
    return [f"fp:c:{counter}", f"fp:h:{counter}", f"fp:e:{counter}"]


class _Batcher:
    """Every command issued in one turn of the event loop goes to Redis as one pipeline.

    redis-py spends about 0.1 ms of CPU on each command it sends alone and under 0.01 ms on
    each in a pipeline, so a gateway that admits and settles hundreds of requests at once
    would spend its core on the client library.  A command waits at most for the loop's
    current turn to end (nothing at concurrency 1); commands issued while a pipeline is in
    flight form the next one, on another connection.
    """

    def __init__(self, r: aioredis.Redis, url: str, scripts: dict[str, str], limit: int = 512):
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
        return float(await self._call(self._settle, _keys(key), [hold, repr(float(amount))]))

    async def release(self, key: str, hold: str) -> float:
        return float(await self._call(self._settle, _keys(key), [hold, "0"]))

    async def value(self, key: str) -> float:
        return float(await self._call(self._value, _keys(key), []))

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
