"""Moving a store to a new embedding model while the old one keeps serving.

The new model's vectors are written beside the old ones (``building``), in batches, oldest
chunk first; searches go on using the active model throughout.  When every chunk has a
new vector the store switches in one transaction (:meth:`VectorStore.activate`), which
also re-checks completeness: chunks ingested meanwhile (they get only the active model's
vector) are caught up first, so the switch never leaves a chunk unsearchable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from fleetpilot.rag.embed import Embedder
from fleetpilot.rag.store import ModelInfo, VectorStore

__all__ = ["reembed"]


def reembed(
    store: VectorStore,
    new: Embedder,
    *,
    batch: int = 256,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> ModelInfo | None:
    """Fill ``new``'s vectors and switch to it; ``None`` when ``stop`` was set first (what
    was written stays, and a later call resumes)."""
    model = store.add_model(new.name, new.spec, new.dim)
    if model.state == "active":
        return model
    total = store.count_missing(model)
    done = 0
    after = 0
    while True:
        if stop is not None and stop.is_set():
            return None
        todo = store.missing(model, batch, after)
        if not todo:
            try:
                store.activate(model)
                return replace(model, state="active")
            except ValueError:  # chunks ingested meanwhile: catch them up from the start
                after = 0
                total = done + store.count_missing(model)
                continue
        store.put_vectors(model, [i for i, _ in todo], new.documents([t for _, t in todo]))
        after = todo[-1][0]
        done += len(todo)
        if progress is not None:
            progress(done, max(total, done))
