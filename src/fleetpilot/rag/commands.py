"""What the ``fleetpilot rag`` commands do, with their output; :mod:`fleetpilot.cli` only
parses flags."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from fleetpilot.errors import ConfigError
from fleetpilot.rag.chunking import chunker
from fleetpilot.rag.embed import DEFAULT as DEFAULT_EMBEDDER
from fleetpilot.rag.embed import embedder
from fleetpilot.rag.indexer import Indexer, Report, pending
from fleetpilot.rag.search import Retriever, Weights
from fleetpilot.rag.store import Filters, VectorStore, open_store

__all__ = [
    "DEFAULT_STORE", "run_ingest", "run_reembed", "run_search", "run_status", "run_watch",
]  # fmt: skip

DEFAULT_STORE = os.environ.get("FLEETPILOT_RAG_STORE", "fleetpilot-rag.db")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    )  # fmt: skip


def _indexer(
    store: VectorStore, spec: str | None, strategy: str, size: int, tenant: str
) -> Indexer:
    active = store.active_model()
    try:
        model = embedder(spec or (active.spec if active else DEFAULT_EMBEDDER))
        semantic = model if strategy == "semantic" else None
        cut = chunker(strategy, size=size, embedder=semantic)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Indexer(store, model, cut, tenant=tenant)


def _report_line(root: Path, r: Report) -> str:
    return (
        f"{root}: {r.added} added, {r.changed} changed, {r.unchanged} unchanged, "
        f"{r.deleted} deleted; {r.chunks_embedded} chunks embedded, {r.chunks_reused} reused; "
        f"{len(r.errors)} skipped; {r.seconds:.2f} s"
    )


def run_ingest(
    paths: list[Path],
    *,
    store_url: str,
    tenant: str,
    embedder_spec: str | None,
    strategy: str,
    size: int,
    tags: tuple[str, ...],
    console: Console,
) -> int:
    """Ingest each path; the number of files skipped as unreadable."""
    store = open_store(store_url)
    try:
        ix = _indexer(store, embedder_spec, strategy, size, tenant)
        skipped = 0
        for root in paths:
            with _progress(console) as bar:
                task = bar.add_task(f"{root}", total=None)

                def show(n: int, total: int, task: TaskID = task) -> None:
                    bar.update(task, completed=n, total=total)

                report = ix.ingest(root, tags=tags, progress=show)
            for err in report.errors:
                console.print(f"[yellow]skipped[/] {err.path}: {err.reason}")
            skipped += len(report.errors)
            console.print(_report_line(root, report))
        return skipped
    finally:
        store.close()


def run_search(
    query: str,
    *,
    store_url: str,
    tenant: str,
    k: int,
    mode: str,
    filters: str | None,
    as_json: bool,
    console: Console,
) -> None:
    store = open_store(store_url, create=False)
    try:
        parsed = Filters.parse(json.loads(filters)) if filters else Filters()
        t0 = time.perf_counter()
        hits = Retriever(store, weights=Weights()).search(
            query, tenant=tenant, k=k, mode=mode, filters=parsed
        )
        ms = (time.perf_counter() - t0) * 1e3
    except ValueError as exc:  # a bad flag: the mode, k, the filters' JSON
        raise ConfigError(str(exc)) from None
    finally:
        store.close()
    if as_json:
        rows = [
            {
                "doc_id": h.doc_id,
                "source": h.source,
                "score": h.score,
                "start": h.start,
                "end": h.end,
                "text": h.text,
            }
            for h in hits
        ]
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"{mode} top {k} for {query!r} ({ms:.1f} ms)")
    for col in ("#", "score", "document", "span", "text"):
        table.add_column(col)
    for n, h in enumerate(hits, 1):
        text = " ".join(h.text.split())
        table.add_row(str(n), f"{h.score:.4f}", h.doc_id, f"{h.start}-{h.end}", text[:100])
    console.print(table)


def run_status(*, store_url: str, prometheus: bool, console: Console) -> None:
    store = open_store(store_url, create=False)
    try:
        if prometheus:
            from prometheus_client import CollectorRegistry, generate_latest

            from fleetpilot.rag.metrics import RagMetrics

            registry = CollectorRegistry()
            RagMetrics(registry).update(store)
            console.out(generate_latest(registry).decode(), end="")
            return
        stats, p = store.stats(), pending(store)
        table = Table(title=f"index {store_url}", show_header=False)
        table.add_row("documents", str(stats.documents))
        table.add_row("chunks", str(stats.chunks))
        for m in store.models():
            table.add_row(f"model ({m.state})", f"{m.name}: {stats.vectors.get(m.name, 0)} vectors")
        for root in store.roots():
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(root.indexed_at))
            table.add_row("root", f"{root.path} (tenant {root.tenant}, {root.chunker}, {when})")
        table.add_row("pending changes", f"{p.changed} changed or new, {p.deleted} deleted")
        if p.unreadable:
            table.add_row("unreadable files", f"{p.unreadable} (skipped until they change)")
        table.add_row("oldest un-indexed change", f"{p.oldest_s:.1f} s")
        if p.vectors:
            table.add_row("vectors to build", str(p.vectors))
        console.print(table)
    finally:
        store.close()


def run_watch(
    root: Path,
    *,
    store_url: str,
    tenant: str,
    embedder_spec: str | None,
    strategy: str,
    size: int,
    interval_s: float,
    metrics_port: int | None,
    console: Console,
    stop: threading.Event | None = None,
) -> None:
    """Ingest ``root``, then again whenever a ``stat`` scan (every ``interval_s``) sees a
    change.  Polling, not inotify: it works the same on every file system (network mounts
    included), and a scan of a few thousand files costs milliseconds."""
    store = open_store(store_url)
    stop = stop or threading.Event()
    metrics = None
    if metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        from fleetpilot.rag.metrics import RagMetrics

        registry = CollectorRegistry()
        metrics = RagMetrics(registry)
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    try:
        ix = _indexer(store, embedder_spec, strategy, size, tenant)
        console.print(_report_line(root, ix.ingest(root)))
        console.print(f"watching {root} (every {interval_s:g} s; Ctrl-C stops)")
        while not stop.wait(interval_s):
            p = pending(store)
            if metrics is not None:
                metrics.update(store)
            if p.changed or p.deleted:
                report = ix.ingest(root)
                if report.added or report.changed or report.deleted:
                    console.print(_report_line(root, report))
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


def run_reembed(*, store_url: str, embedder_spec: str, batch: int, console: Console) -> None:
    from fleetpilot.rag.migrate import reembed

    store = open_store(store_url, create=False)
    try:
        new = embedder(embedder_spec)
        with _progress(console) as bar:
            task = bar.add_task(f"re-embedding with {new.name}", total=None)
            model = reembed(
                store, new, batch=batch,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
        console.print(f"serving {model.name if model else '(stopped)'}")
    finally:
        store.close()
