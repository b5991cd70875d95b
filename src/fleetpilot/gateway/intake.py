"""First stage of the pipeline: turn raw HTTP bytes into a checked :class:`Inbound`.

Everything a client can get wrong is caught here and raised as an OpenAI-shaped error, so
later stages can trust the body: malformed JSON, invalid
UTF-8, nesting too deep, wrong types or shapes, out-of-bounds headers and ``max_tokens`` over
the model's context (400), an unknown model (404).  The size limit (413) is enforced while
reading, before parsing.  Both fronts call :func:`admit` and nothing else, so a body is
judged the same way whichever front read it; whatever a client sends, the answer is one of
these errors, never an exception escaping into a protocol callback.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetpilot.config import GatewayConfig
from fleetpilot.core.model import ServiceClass
from fleetpilot.errors import BadRequest, ModelNotFound
from fleetpilot.tokens import estimate_tokens, prompt_text

if TYPE_CHECKING:
    from fleetpilot.gateway.fleet import LiveFleet

__all__ = ["DEFAULT_MAX_TOKENS", "Inbound", "admit", "new_request_id", "parse"]

# a plain decimal number of seconds: no '1_0', 'inf', 'nan', hex or exponent games
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?|\.[0-9]{1,9}")


def new_request_id() -> str:
    """An id for one request, sent back as ``x-request-id`` and written in the log."""
    return "req_" + os.urandom(12).hex()


DEFAULT_MAX_TOKENS = 256  # when a client sets none; vLLM would use the context length
SERVICE_HEADER = "x-fleetpilot-service-class"
SLO_HEADER = "x-fleetpilot-ttft-slo"


@dataclass(slots=True)
class Inbound:
    kind: str  # "chat" | "completions" | "embeddings"
    raw: bytes
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int
    prompt_tokens: int
    include_usage: bool
    service_class: ServiceClass
    ttft_slo: float | None  # seconds, from the header; None = the configured default
    request_id: str = ""
    headers: Any = None  # the client's, as the front read them (case-insensitive lookups)

    @property
    def path(self) -> str:
        return {
            "chat": "/v1/chat/completions",
            "completions": "/v1/completions",
            "embeddings": "/v1/embeddings",
        }[self.kind]


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer", param=name)
    return value


def _content_ok(content: Any) -> bool:
    """A message's content: a string, or an array of typed parts whose text is a string."""
    if content is None or isinstance(content, str):
        return True
    if not isinstance(content, list):
        return False
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return False
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            return False
    return True


def _prompt_ok(prompt: Any) -> bool:
    """A string, an array of strings, of token ids, or of arrays of token ids (as OpenAI)."""
    if isinstance(prompt, str):
        return True
    if not isinstance(prompt, list):
        return False
    for p in prompt:
        if isinstance(p, list):
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                return False
        elif not isinstance(p, str | int) or isinstance(p, bool):
            return False
    return True


def _slo(headers: Any, config: GatewayConfig) -> float | None:
    text = headers.get(SLO_HEADER)
    if text is None:
        return None
    lo, hi = config.min_ttft_slo_s, config.max_ttft_slo_s
    if not isinstance(text, str) or not _SECONDS.fullmatch(text.strip()):
        raise BadRequest(
            f"{SLO_HEADER} must be a plain number of seconds between {lo:g} and {hi:g}"
        )
    value = float(text)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadRequest(f"{SLO_HEADER} must be between {lo:g} and {hi:g} seconds")
    return value


def parse(kind: str, raw: bytes, headers: Any, config: GatewayConfig) -> Inbound:
    try:
        body = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8: {exc.reason}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array", param="messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest("each message must be an object with a 'role'", param="messages")
            if not _content_ok(m.get("content")):
                raise BadRequest(
                    "message 'content' must be a string or an array of typed parts",
                    param="messages",
                )
    elif kind == "completions":
        if not _prompt_ok(body.get("prompt")):
            raise BadRequest(
                "'prompt' must be a string or an array of strings or token ids", param="prompt"
            )
    else:
        inp = body.get("input")
        if not isinstance(inp, str | list):
            raise BadRequest("'input' must be a string or array", param="input")
        stream = False
    max_tokens = _int_field(body, "max_completion_tokens") or _int_field(body, "max_tokens")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    include_usage = bool(options and options.get("include_usage") is True)

    service = headers.get(SERVICE_HEADER, "interactive")
    try:
        service_class = ServiceClass(service)
    except ValueError:
        raise BadRequest(f"{SERVICE_HEADER} must be 'interactive' or 'batch'") from None
    ttft_slo = _slo(headers, config)

    if kind == "embeddings":
        inp = body["input"]
        text = inp if isinstance(inp, str) else " ".join(s for s in inp if isinstance(s, str))
    else:
        text = prompt_text(body)
    return Inbound(
        kind=kind,
        raw=raw,
        body=body,
        model=model,
        stream=stream,
        max_tokens=max_tokens or (1 if kind == "embeddings" else DEFAULT_MAX_TOKENS),
        prompt_tokens=estimate_tokens(text),
        include_usage=include_usage,
        service_class=service_class,
        ttft_slo=ttft_slo,
        headers=headers,
    )


def admit(
    kind: str,
    raw: bytes,
    headers: Any,
    config: GatewayConfig,
    fleet: LiveFleet,
    request_id: str = "",
) -> Inbound:
    """The checks every API request passes before its call enters the pipeline: body,
    model, bounds (who is calling is the auth stage's question)."""
    inbound = parse(kind, raw, headers, config)
    inbound.request_id = request_id
    if not fleet.serves(inbound.model):
        raise ModelNotFound(f"the model {inbound.model!r} does not exist", param="model")
    fleet.arrived(inbound.model)
    context = fleet.context_tokens(inbound.model)
    if all(inbound.body.get(k) is None for k in ("max_tokens", "max_completion_tokens")):
        inbound.max_tokens = min(inbound.max_tokens, context)  # the default, not the client's
    elif kind != "embeddings" and inbound.max_tokens > context:
        param = "max_completion_tokens" if "max_completion_tokens" in inbound.body else "max_tokens"
        raise BadRequest(
            f"'{param}' is {inbound.max_tokens}, over the model's context of {context} tokens",
            param=param,
        )
    return inbound
