"""``fleetpilot profile``: measure a running engine into a catalogue Profile.

A profile that was assumed rather than measured is what packs every request onto one replica
(the router believes a CPU replica is an A10G).  This measures the three things the perf
model needs, over the engine's own OpenAI API, the way a client sees them:

- **prefill rate**: streamed completions of one token at a sweep of prompt lengths, each
  prompt starting with words never sent before so no prefix cache can serve it.  The TTFT
  less one decode step is fitted through the origin against the engine's own prompt count.
- **decode step time** at each batch size: that many streams at once, asked to ignore their
  end-of-sequence token.  Only the window in which all of them are decoding counts (from
  the last first token to the first last token): before it, the others' prefills share the
  engine's steps.  A stream's step is its time across that window over the tokens it got in
  it (the engine's count), and the step at that batch is the median.
- **admission limit**: the batch at which streams stop starting together.  A stream whose
  first token came only after another stream of its batch had finished waited for a slot
  (:func:`admitted`); the largest number of streams seen running at once is ``max_batch``,
  and the sweep stops there.

The output is the catalogue's YAML for one profile, with when, on what engine and version,
on what hardware and how it was measured, so it can be pasted into a catalogue copy or
inline into a fleet file's pool (``profile:``).  The fitting is in pure functions below, the
I/O in :class:`Profiler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import secrets
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from fleetpilot.engines import detect, engine
from fleetpilot.errors import ConfigError

__all__ = [
    "Measured",
    "Profiler",
    "admitted",
    "decode_step",
    "fit_prefill_rate",
    "hardware",
    "profile_yaml",
]

DEFAULT_PROMPTS = (64, 128, 256, 512, 1024)
DEFAULT_BATCHES = (1, 2, 4, 8, 16)


# -- fitting (pure) -------------------------------------------------------------------------
def fit_prefill_rate(points: Sequence[tuple[int, float]], step: float) -> float:
    """Prompt tokens per second from (prompt tokens, TTFT) pairs: the perf model predicts an
    idle replica's TTFT as one decode step plus ``tokens / rate``, so ``rate`` is the least
    squares slope, through the origin, of tokens against TTFT less ``step``."""
    num = sum(n * n for n, _ in points)
    den = sum(n * max(t - step, 1e-6) for n, t in points)
    if num <= 0 or den <= 0:
        raise ValueError("no prefill points to fit")
    return num / den


def decode_step(marks: Sequence[Sequence[tuple[float, int]]]) -> float:
    """Seconds per token while every stream of a batch was decoding.  ``marks`` are each
    stream's (time, tokens so far) at every chunk; the window runs from the latest first
    token to the earliest last one.  Streams with under two chunks in it are left out; if
    none is left (streams too short to overlap), each stream's whole run is used."""
    start = max(m[0][0] for m in marks)
    end = min(m[-1][0] for m in marks)
    per: list[float] = []
    for m in marks:
        inside = [(t, n) for t, n in m if start <= t <= end]
        if len(inside) >= 2 and inside[-1][1] > inside[0][1]:
            per.append((inside[-1][0] - inside[0][0]) / (inside[-1][1] - inside[0][1]))
    if not per:
        per = [(m[-1][0] - m[0][0]) / (m[-1][1] - m[0][1]) for m in marks if m[-1][1] > m[0][1]]
    if not per:
        raise ValueError("no stream produced two tokens")
    return statistics.median(per)


def admitted(first: Sequence[float], ends: Sequence[float]) -> int:
    """How many of a batch's streams ran at once: those whose first token came before any
    stream of the batch had finished.  A stream queued for a slot can only start once a
    slot frees, that is after some stream ended; prefills done one after another still all
    come before the first end."""
    if not first:
        return 0
    cut = min(ends)
    return sum(1 for f in first if f < cut)


@dataclass(slots=True)
class Measured:
    """What a profiling run found, and where."""

    model: str
    accelerator: str
    url: str
    engine: str
    version: str
    prefill_rate: float
    steps: list[tuple[int, float]]
    max_batch: int
    context_tokens: int
    prefill_points: list[tuple[int, float]] = field(default_factory=list)
    hardware: str = ""
    method: str = ""
    when: str = ""


def profile_yaml(m: Measured) -> str:
    """The profile as the catalogue writes one (``profiles: {model: {accelerator: …}}``)."""
    entry = {
        "count": 1,
        "prefill_rate": round(m.prefill_rate, 1),
        "max_batch": m.max_batch,
        "context_tokens": m.context_tokens,
        "step_points": [[b, round(s, 5)] for b, s in m.steps],
        "startup_s": 30,
        "source": f"fleetpilot profile, {m.when}",
        "measured": {
            "date": m.when,
            "url": m.url,
            "engine": m.engine,
            "version": m.version,
            "hardware": m.hardware,
            "method": m.method,
            "prefill_points": [[n, round(t, 4)] for n, t in m.prefill_points],
        },
    }
    head = (
        f"# Measured by `fleetpilot profile` on {m.when} against {m.url} ({m.engine} "
        f"{m.version}).\n# Paste under a catalogue copy's `profiles:`, or the inner mapping "
        "under a fleet file pool's `profile:` (with price_per_hour).\n"
    )
    body = {"profiles": {m.model: {m.accelerator: entry}}}
    return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=100)


def hardware(url: str) -> str:
    """This machine's CPU when the engine is on loopback (it runs here); else unknown."""
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return "unknown (remote engine)"
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} logical CPUs (this host)"


# -- measuring (I/O) ------------------------------------------------------------------------
_WORDS = [
    "amber",
    "basin",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "island",
    "juniper",
    "kestrel",
    "lagoon",
    "meadow",
    "nectar",
    "orchid",
    "pepper",
    "quartz",
    "river",
    "saffron",
    "timber",
    "umber",
    "valley",
    "willow",
    "yarrow",
    "zephyr",
]


@dataclass(slots=True)
class _Run:
    first: float  # seconds from the request to its first token
    end: float  # to its last
    prompt: int  # the engine's counts
    tokens: int
    marks: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens so far)


class Profiler:
    """Measures one engine at ``url`` serving ``model`` (see the module docstring)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        progress: Callable[[str, float], None] | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.progress = progress or (lambda _what, _share: None)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.kind = engine("auto")
        self._rng = random.Random()  # prompts differ from every earlier run's (prefix caches)
        self._session: aiohttp.ClientSession | None = None

    # -- the engine ---------------------------------------------------------------------------
    async def _get(self, path: str) -> tuple[int, bytes]:
        assert self._session is not None
        async with self._session.get(self.url + path, headers=self.headers) as r:
            return r.status, await r.read()

    async def identify(self) -> tuple[str, str, int | None]:
        """The engine's kind, version and context; a clear error if ``url`` is no
        OpenAI-compatible engine serving ``model``."""
        try:
            status, data = await self._get("/v1/models")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach {self.url}: {exc}") from None
        try:
            models: Any = json.loads(data) if status == 200 else None
            ids = [str(m.get("id")) for m in models["data"]]
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ConfigError(
                f"{self.url} is not an OpenAI-compatible engine: GET /v1/models answered "
                f"{status} {data[:120]!r}"
            ) from None
        if self.model not in ids:
            raise ConfigError(f"{self.url} does not serve {self.model!r}; it serves {ids}")
        metrics = None
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            status, text = await self._get("/metrics")
            metrics = text.decode("utf-8", "replace") if status == 200 else None
        name = detect(models, metrics) or "unknown"
        self.kind = engine(name)
        version, context = "unknown", _context_of(models, self.model)
        if self.kind.version_path:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
                status, data = await self._get(self.kind.version_path)
                if status == 200:
                    info = json.loads(data)
                    version = _version_of(info)
                    context = context or _context_of(info, self.model)
        return name, version, context

    def _prompt(self, words: int) -> str:
        """``words`` words whose start was never sent before (no prefix cache serves it)."""
        head = secrets.token_hex(8)
        return head + " " + " ".join(self._rng.choice(_WORDS) for _ in range(words))

    async def _stream(self, prompt: str, max_tokens: int) -> _Run:
        """One streamed completion, timed token by token as the client sees it."""
        assert self._session is not None
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            **self.kind.stream_fields,
        }
        start = time.perf_counter()
        first = end = 0.0
        produced, usage = 0, dict[str, Any]()
        marks: list[tuple[float, int]] = []
        async with self._session.post(
            self.url + "/v1/completions", json=body, headers=self.headers
        ) as r:
            if r.status != 200:
                raise ConfigError(f"{self.url} refused a completion: {r.status} {await r.text()}")
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                payload = line[5:].strip()
                chunk = json.loads(payload)
                usage = chunk.get("usage") or usage
                choices = chunk.get("choices") or ()
                if choices and choices[0].get("text"):
                    now = time.perf_counter() - start
                    first = first or now
                    end = now
                    so_far = self.kind.tokens_so_far(payload)
                    produced = so_far if so_far is not None else produced + 1
                    marks.append((now, produced))
        tokens = int(usage.get("completion_tokens") or produced)
        return _Run(first, end, int(usage.get("prompt_tokens") or 0), tokens, marks)

    # -- the sweeps ---------------------------------------------------------------------------
    async def measure(
        self,
        accelerator: str,
        *,
        prompts: Sequence[int] = DEFAULT_PROMPTS,
        batches: Sequence[int] = DEFAULT_BATCHES,
        repeats: int = 3,
        decode_tokens: int = 48,
    ) -> Measured:
        # A connection each: llama-server drops idle keep-alive connections, and a request
        # written into one that it just dropped fails.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(
            timeout=self.timeout, connector=connector
        ) as self._session:
            name, version, context = await self.identify()
            context = context or 8192
            total = len(batches) + len(prompts) * repeats
            done = 0

            def tick(what: str) -> None:
                nonlocal done
                done += 1
                self.progress(what, done / total)

            await self._stream(self._prompt(8), 4)  # warm up (weights paged in, graphs built)
            steps: list[tuple[int, float]] = []
            max_batch = 0
            for b in batches:
                runs = await asyncio.gather(
                    *(self._stream(self._prompt(16), decode_tokens) for _ in range(b))
                )
                tick(f"decode at batch {b}")
                running = admitted([r.first for r in runs], [r.end for r in runs])
                if running < b:  # it queued some: the last batch that all ran is the limit
                    max_batch = max(max_batch, running)
                    done += len(batches) - batches.index(b) - 1
                    break
                max_batch = b
                steps.append((b, decode_step([r.marks for r in runs if r.marks])))
            if not steps:
                raise ConfigError(f"{self.url} did not run even one stream at a time")
            step1 = steps[0][1]
            points: list[tuple[int, float]] = []
            for words in prompts:
                for _ in range(repeats):
                    run = await self._stream(self._prompt(words), 1)
                    if run.prompt > context - 8:
                        break
                    points.append((run.prompt, run.first))
                    tick(f"prefill of {run.prompt} tokens")
            rate = fit_prefill_rate(points, step1)
        method = (
            f"prefill: streamed completions of 1 token, prompts of {list(prompts)} words x "
            f"{repeats} with fresh prefixes, TTFT less one step fitted through the origin; "
            f"decode: {decode_tokens} tokens per stream ignoring EOS, median per-token time "
            f"while all streams of a batch decoded, at batch {[b for b, _ in steps]}; "
            "max_batch: the largest batch whose streams all started before one ended"
        )
        return Measured(
            model=self.model,
            accelerator=accelerator,
            url=self.url,
            engine=name,
            version=version,
            prefill_rate=rate,
            steps=steps,
            max_batch=max_batch,
            context_tokens=context,
            prefill_points=points,
            hardware=hardware(self.url),
            method=method,
            when=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        )


def _version_of(info: Any) -> str:
    """An engine's version from its info endpoint (vLLM ``/version``, llama.cpp ``/props``,
    TGI ``/info``, SGLang ``/get_server_info``)."""
    if not isinstance(info, dict):
        return "unknown"
    for key in ("version", "build_info", "sha"):
        value = info.get(key)
        if isinstance(value, str | int) and str(value):
            return str(value)
    return "unknown"


def _context_of(info: Any, model: str) -> int | None:
    """The context one request may use, where the engine says: vLLM's ``max_model_len`` in
    ``/v1/models``, llama.cpp's per-slot ``n_ctx`` in ``/props``."""
    if not isinstance(info, dict):
        return None
    for m in info.get("data") or ():
        if not isinstance(m, dict) or m.get("id") != model:
            continue
        if isinstance(m.get("max_model_len"), int):
            return int(m["max_model_len"])
        meta = m.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("n_ctx"), int):
            return int(meta["n_ctx"])
    settings = info.get("default_generation_settings")
    if isinstance(settings, dict) and isinstance(settings.get("n_ctx"), int):
        return int(settings["n_ctx"])
    for key in ("max_input_tokens", "max_total_tokens", "context_length"):
        if isinstance(info.get(key), int):
            return int(info[key])
    return None
