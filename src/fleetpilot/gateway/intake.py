"""First stage of the pipeline: turn raw HTTP bytes into a checked :class:`Inbound`.

Everything a client can get wrong is caught here and raised as an OpenAI-shaped error, so
later stages can trust the body: malformed JSON and invalid UTF-8 (400), wrong types (400),
an unknown model (404).  The size limit (413) is enforced while reading, before parsing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleetpilot.core.model import ServiceClass
from fleetpilot.errors import BadRequest
from fleetpilot.tokens import estimate_tokens, prompt_text

__all__ = ["DEFAULT_MAX_TOKENS", "Inbound", "parse"]

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


def parse(kind: str, raw: bytes, headers: Any) -> Inbound:
    try:
        body = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8: {exc.reason}") from None
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
            content = m.get("content")
            if content is not None and not isinstance(content, str | list):
                raise BadRequest("message 'content' must be a string or array", param="messages")
    elif kind == "completions":
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list):
            raise BadRequest("'prompt' must be a string or array", param="prompt")
    else:
        inp = body.get("input")
        if not isinstance(inp, str | list):
            raise BadRequest("'input' must be a string or array", param="input")
        stream = False
    max_tokens = _int_field(body, "max_completion_tokens") or _int_field(body, "max_tokens")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    include_usage = bool(options and options.get("include_usage"))

    service = headers.get(SERVICE_HEADER, "interactive")
    try:
        service_class = ServiceClass(service)
    except ValueError:
        raise BadRequest(f"{SERVICE_HEADER} must be 'interactive' or 'batch'") from None
    slo_text = headers.get(SLO_HEADER)
    ttft_slo = None
    if slo_text is not None:
        try:
            ttft_slo = float(slo_text)
        except ValueError:
            raise BadRequest(f"{SLO_HEADER} must be a number of seconds") from None
        if not ttft_slo > 0:
            raise BadRequest(f"{SLO_HEADER} must be positive")

    if kind == "embeddings":
        text = (
            body["input"] if isinstance(body["input"], str) else " ".join(map(str, body["input"]))
        )
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
    )
