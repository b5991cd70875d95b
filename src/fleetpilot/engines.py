"""What differs between inference engines, one entry per kind.

The gateway speaks OpenAI's API to every replica, but engines fill the gaps of that API
differently: what their ``/metrics`` call the requests they hold, how many tokens one
streamed chunk stands for, and how to make them carry on an assistant message that another
replica began.  Everything the gateway, the scrape and ``fleetpilot profile`` need to know
about an engine is in its :class:`Engine` here, so a new kind is one entry in
:data:`ENGINES`.

Usage needs no entry: every engine's ``usage`` is taken from whichever chunk carries it (vLLM
sends a chunk of its own, llama.cpp puts it on the finish chunk), and the gateway sends the
client exactly one.

A pool names its replicas' kind (``engine:`` in the fleet file) or leaves it ``auto``: then
:func:`detect` reads it from ``/v1/models`` (``owned_by``) and ``/metrics`` (name prefixes).
The emulator is vLLM-shaped; its own entry adds the one field it needs to continue a
completion word for word.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULT", "ENGINES", "Engine", "detect", "engine", "in_flight"]

_NONE: Mapping[str, Any] = MappingProxyType({})
_CONTINUE_CHAT: Mapping[str, Any] = MappingProxyType(
    {"continue_final_message": True, "add_generation_prompt": False}
)


@dataclass(frozen=True, slots=True)
class Engine:
    """One engine kind.

    ``running`` and ``waiting``: its ``/metrics`` names for requests in the batch and queued.
    ``stream_fields``: added to every streamed request (llama.cpp reports its token count on
    each chunk only when asked).  ``produced``: a pattern whose first group is the tokens
    generated so far, read off each streamed chunk; None when the engine sends one token per
    chunk.  ``continue_chat``: fields that make it continue the final assistant message (None:
    it cannot, and a broken chat stream ends with an error event).  ``continue_count``: a
    field naming how many tokens of a continued completion's prompt were generated.
    """

    name: str
    running: tuple[str, ...]
    waiting: tuple[str, ...]
    owned_by: tuple[str, ...] = ()
    metric_prefix: str = ""
    stream_fields: Mapping[str, Any] = field(default_factory=lambda: _NONE)
    produced: re.Pattern[bytes] | None = None
    continue_chat: Mapping[str, Any] | None = field(default_factory=lambda: _CONTINUE_CHAT)
    continue_count: str | None = None
    version_path: str | None = None  # GET it for the engine's version (profile provenance)
    notes: str = field(default="", compare=False)

    def tokens_so_far(self, payload: bytes) -> int | None:
        """The tokens this stream's request has generated, as the chunk ``payload`` says."""
        if self.produced is None:
            return None
        m = self.produced.search(payload)
        return int(m.group(1)) if m is not None else None


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine(
            "vllm",
            running=("vllm:num_requests_running",),
            waiting=("vllm:num_requests_waiting",),
            owned_by=("vllm",),
            metric_prefix="vllm:",
            version_path="/version",
            notes="one token per chunk (stream_interval 1); usage in a chunk of its own",
        ),
        Engine(
            "llama.cpp",
            running=("llamacpp:requests_processing",),
            waiting=("llamacpp:requests_deferred",),
            owned_by=("llamacpp",),
            metric_prefix="llamacpp:",
            stream_fields=MappingProxyType({"timings_per_token": True}),
            produced=re.compile(rb'"predicted_n":\s*(\d+)'),
            version_path="/props",
            notes="holds text back around stop sequences, so chunks are not tokens; "
            "usage on the finish chunk",
        ),
        Engine(
            "sglang",
            running=("sglang:num_running_reqs",),
            waiting=("sglang:num_queue_reqs",),
            owned_by=("sglang",),
            metric_prefix="sglang:",
            version_path="/get_server_info",
            notes="one token per chunk (stream_interval 1)",
        ),
        Engine(
            "tgi",
            running=("tgi_batch_current_size",),
            waiting=("tgi_queue_size",),
            owned_by=("tgi", "text-generation-inference"),
            metric_prefix="tgi_",
            continue_chat=None,
            version_path="/info",
            notes="one token per chunk; no way to continue an assistant message",
        ),
        Engine(
            "emulator",
            running=("vllm:num_requests_running",),
            waiting=("vllm:num_requests_waiting",),
            owned_by=("fleetpilot-emulator",),
            continue_count="fleetpilot_continue_from",
            notes="fleetpilot's own replica emulator: vLLM's shapes and names",
        ),
    )
}

DEFAULT = "vllm"  # what an engine that cannot be told apart is taken for


def engine(name: str) -> Engine:
    """The entry for ``name`` (``auto``, or any unknown name, reads as vLLM until detected)."""
    return ENGINES.get(name) or ENGINES[DEFAULT]


def detect(models: Any, metrics: str | None) -> str | None:
    """The kind of engine whose ``/v1/models`` answered ``models`` (parsed JSON) and whose
    ``/metrics`` read ``metrics``; None when neither tells."""
    owners: set[str] = set()
    with contextlib.suppress(AttributeError, TypeError):
        owners = {str(m.get("owned_by", "")).lower() for m in models.get("data") or ()}
    for e in ENGINES.values():
        if owners & set(e.owned_by):
            return e.name
    if metrics:
        for e in ENGINES.values():
            if e.metric_prefix and any(
                line.startswith(e.metric_prefix) for line in metrics.splitlines()
            ):
                return e.name
    return None


def in_flight(text: str, kind: Engine | None = None) -> int:
    """Requests running plus waiting on a replica, from its ``/metrics`` text, summed over
    label sets; ``kind`` None reads the kind off the names in ``text``."""
    e = kind or engine(detect(None, text) or DEFAULT)
    names = (*e.running, *e.waiting)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(names):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return int(total)
