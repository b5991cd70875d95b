"""OpenAI's request and response shapes, as the emulator reads and writes them.

The emulated text is deterministic: output token ``i`` is the word ``" tok{i}"``, so
``completion_tokens`` is the number of words and a continuation can be checked word for word.
Continuation (what the gateway does after a replica dies mid-stream) follows vLLM: a chat
request whose last message is the assistant's partial answer, with
``continue_final_message: true``, or a completions request whose prompt already ends with the
partial text and says how many words that was in ``fleetpilot_continue_from``.  Either way
the output index starts after the words already produced, so the two halves join into exactly
the text of an uninterrupted run.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from fleetpilot.errors import BadRequest, ModelNotFound
from fleetpilot.tokens import estimate_tokens, prompt_text

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "EMBEDDING_DIM",
    "CompletionRequest",
    "Reply",
    "embeddings_response",
    "parse_completion",
    "word",
]

DEFAULT_MAX_TOKENS = 16
EMBEDDING_DIM = 64

Kind = Literal["chat", "text"]


def word(index: int) -> str:
    """Output token ``index`` of any emulated answer."""
    return f" tok{index}"


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """What a chat or completions body asks for, checked."""

    kind: Kind
    model: str
    prompt_tokens: int
    max_tokens: int
    start: int  # absolute index of the first output word (> 0 when continuing)
    stream: bool
    include_usage: bool


def _check_model(body: dict[str, Any], served: str) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", param="model")
    if model != served:
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
    return model


def _int_field(body: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadRequest(f"'{name}' must be an integer >= {minimum}", param=name)
    return value


def _bool_field(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", param=name)
    return value


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _chat_start(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("every message needs a string 'role'", param="messages")
    if not _bool_field(body, "continue_final_message"):
        return 0
    if body.get("add_generation_prompt") is True:
        raise BadRequest(
            "cannot set both 'continue_final_message' and 'add_generation_prompt'",
            param="continue_final_message",
        )
    last = messages[-1]
    if last["role"] != "assistant":
        raise BadRequest(
            "'continue_final_message' needs the last message to be the assistant's",
            param="continue_final_message",
        )
    return len(_content_text(last.get("content")).split())


def _text_start(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    ok = isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
    )
    if not ok:
        raise BadRequest("'prompt' must be a string or a list of strings", param="prompt")
    return _int_field(body, "fleetpilot_continue_from", 0, 0)


def parse_completion(body: Any, *, kind: Kind, served_model: str) -> CompletionRequest:
    """Check a ``/v1/chat/completions`` (``kind="chat"``) or ``/v1/completions`` body."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = _check_model(body, served_model)
    start = _chat_start(body) if kind == "chat" else _text_start(body)
    if body.get("n") not in (None, 1):
        raise BadRequest("the emulator supports only n=1", param="n")
    if body.get("max_completion_tokens") is not None:
        max_tokens = _int_field(body, "max_completion_tokens", DEFAULT_MAX_TOKENS, 1)
    else:
        max_tokens = _int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 1)
    stream = _bool_field(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    include_usage = bool(options and options.get("include_usage") is True)
    return CompletionRequest(
        kind=kind,
        model=model,
        prompt_tokens=estimate_tokens(prompt_text(body)),
        max_tokens=max_tokens,
        start=start,
        stream=stream,
        include_usage=stream and include_usage,
    )


@dataclass(frozen=True, slots=True)
class Reply:
    """Builds the JSON objects of one answer, streamed or whole."""

    req: CompletionRequest
    id: str
    created: int

    @classmethod
    def new(cls, req: CompletionRequest, created: int) -> Reply:
        prefix = "chatcmpl" if req.kind == "chat" else "cmpl"
        return cls(req, f"{prefix}-{uuid.uuid4().hex}", created)

    @property
    def _object(self) -> str:
        return "chat.completion.chunk" if self.req.kind == "chat" else "text_completion"

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = self.req.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.req.model,
            "choices": [choice],
        }
        if self.req.include_usage:
            out["usage"] = None
        return out

    def token_chunk(self, index: int) -> dict[str, Any]:
        """The chunk carrying output token ``index`` (relative to this request)."""
        text = word(self.req.start + index)
        if self.req.kind == "text":
            return self._chunk({"index": 0, "text": text, "logprobs": None, "finish_reason": None})
        delta = {"role": "assistant", "content": text} if index == 0 else {"content": text}
        return self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})

    def finish_chunk(self) -> dict[str, Any]:
        if self.req.kind == "text":
            return self._chunk(
                {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
            )
        return self._chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"})

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.req.model,
            "choices": [],
            "usage": self.usage(completion_tokens),
        }

    def whole(self, completion_tokens: int) -> dict[str, Any]:
        """The non-streamed answer after ``completion_tokens`` tokens."""
        start = self.req.start
        text = "".join(word(i) for i in range(start, start + completion_tokens))
        if self.req.kind == "text":
            obj = "text_completion"
            choice: dict[str, Any] = {"index": 0, "text": text}
        else:
            obj = "chat.completion"
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        choice |= {"logprobs": None, "finish_reason": "length"}
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.req.model,
            "choices": [choice],
            "usage": self.usage(completion_tokens),
        }


def _embed(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text``: equal inputs, equal embeddings."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = [(v - 32767.5) / 32767.5 for v in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embeddings_response(body: Any, *, served_model: str) -> dict[str, Any]:
    """``/v1/embeddings``: deterministic pseudo-embeddings, float or base64 encoded."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = _check_model(body, served_model)
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw):
        inputs = list(raw)
    else:
        raise BadRequest("'input' must be a string or a non-empty list of strings", param="input")
    dimensions = _int_field(body, "dimensions", EMBEDDING_DIM, 1)
    if dimensions > EMBEDDING_DIM:
        raise BadRequest(f"'dimensions' must be <= {EMBEDDING_DIM}", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    data = []
    for i, text in enumerate(inputs):
        vector = _embed(text, dimensions)
        value: list[float] | str = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(estimate_tokens(t) for t in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
