"""The RAG data layer on real stores: SQLite + sqlite-vec + the BM25 index in a temporary file, and
Postgres + pgvector started from its wheel.  Embeddings are the real offline models."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fleetpilot.cli import app
from fleetpilot.rag.chunking import chunker
from fleetpilot.rag.documents import Document, load_file
from fleetpilot.rag.embed import embedder
from fleetpilot.rag.evaluate import ndcg, recall, span_scores
from fleetpilot.rag.fusion import rrf
from fleetpilot.rag.indexer import Indexer, pending
from fleetpilot.rag.keywords import document_terms, query_terms
from fleetpilot.rag.migrate import reembed
from fleetpilot.rag.search import Retriever
from fleetpilot.rag.sqlite import SqliteStore
from fleetpilot.rag.store import Filters, VectorStore, open_store
from fleetpilot.rag.tokens import count

TOPICS = {
    "aero": "The boundary layer on a flat plate thickens downstream as viscous drag grows. "
    "Shock waves form ahead of a blunt body in supersonic flow. Heat transfer at the "
    "stagnation point rises with Mach number.",
    "cook": "Knead the dough for ten minutes until it is smooth and elastic. Let it rise "
    "in a warm place for an hour. Bake the loaf until the crust sounds hollow.",
    "law": "The tenant must give written notice thirty days before the lease ends. The "
    "landlord may keep the deposit for unpaid rent. Disputes go to the county court.",
}


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer says ``text`` (Helvetica), built by hand."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: Any, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        s: VectorStore = SqliteStore(tmp_path / "rag.db")
    else:
        s = open_store(request.getfixturevalue("postgres_url"))
    yield s
    s.close()


def _indexer(store: VectorStore, tenant: str = "default", size: int = 48) -> Indexer:
    return Indexer(store, embedder("wordllama"), chunker("recursive", size=size), tenant=tenant)


# -- documents and chunking ------------------------------------------------------------


def test_every_format_is_read_and_bad_files_are_reported_by_name(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("Plain text about gliders.")
    (docs / "b.md").write_text("# Wind tunnels\n\nClosed-circuit tunnels recirculate air.")
    (docs / "sub" / "c.html").write_text(
        "<html><head><title>Kites</title><script>var secret='scriptonly';</script></head>"
        "<body><h1>Kites</h1><p>Box kites fly in strong wind.</p></body></html>"
    )
    (docs / "d.pdf").write_bytes(minimal_pdf("Propellers convert torque into thrust."))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf at all")
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "empty.md").write_text("   \n\n")
    (docs / ".hidden.txt").write_text("never read")
    store = SqliteStore(tmp_path / "rag.db")
    report = _indexer(store).ingest(docs)
    assert report.added == 4
    bad = {Path(e.path).name: e.reason for e in report.errors}
    assert set(bad) == {"broken.pdf", "latin1.txt", "empty.md"}
    assert "UTF-8" in bad["latin1.txt"] and "PDF" in bad["broken.pdf"]
    assert set(store.documents("default")) == {"a.txt", "b.md", "sub/c.html", "d.pdf"}
    r = Retriever(store)
    for query, doc in [("torque thrust", "d.pdf"), ("box kites", "sub/c.html"),
                       ("recirculate", "b.md"), ("gliders", "a.txt")]:  # fmt: skip
        assert r.search(query, tenant="default", k=1, mode="keyword")[0].doc_id == doc
    assert r.search("scriptonly", tenant="default", mode="keyword") == []
    html = load_file(docs / "sub" / "c.html")
    assert html.meta["title"] == "Kites" and "# Kites" in html.text
    # a second run reports the same bad files without reading anything again
    again = _indexer(store).ingest(docs)
    assert (again.unchanged, again.chunks_embedded, len(again.errors)) == (4, 0, 3)
    assert pending(store).unreadable == 3 and pending(store).changed == 0


def test_chunk_spans_cover_the_text_and_respect_the_size() -> None:
    text = "\n\n".join(f"# Section {i}\n\n" + TOPICS["aero"] * 3 for i in range(4))
    for strategy in ("fixed", "recursive", "semantic"):
        size = 40
        chunks = chunker(strategy, size=size, embedder=embedder("wordllama"))(text)
        assert chunks and all(c.tokens <= size for c in chunks), strategy
        assert all(text[c.start : c.end] == c.text for c in chunks)
        covered = sum(len(c.text.split()) for c in chunks)
        assert covered >= len(text.split()), strategy  # nothing dropped
    fixed = chunker("fixed", size=40, overlap=10)(text)
    assert all(a.end > b.start for a, b in itertools.pairwise(fixed))  # they overlap


def test_recursive_chunks_end_where_sections_do() -> None:
    sections = [f"# Part {i}\n\n" + " ".join([f"word{i}"] * 20) for i in range(6)]
    text = "\n\n".join(sections)
    chunks = chunker("recursive", size=count(sections[0]) + 5)(text)
    assert [c.text for c in chunks] == sections


def test_semantic_chunking_splits_where_the_topic_changes() -> None:
    text = " ".join([TOPICS["aero"], TOPICS["cook"], TOPICS["law"]])
    chunks = chunker("semantic", size=200, embedder=embedder("wordllama"), keep=0.7)(text)
    starts = {c.start for c in chunks}
    assert text.index("Knead") in starts and text.index("The tenant") in starts


# -- freshness -------------------------------------------------------------------------


def test_reingest_embeds_only_what_changed_and_deletes_what_went(
    store: Any, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraphs = {
        name: [f"{text} Paragraph {i} of {name}." for i in range(6)]
        for name, text in TOPICS.items()
    }
    for name, paras in paragraphs.items():
        (docs / f"{name}.md").write_text("\n\n".join(paras))
    ix = _indexer(store)
    first = ix.ingest(docs)
    assert (first.added, first.chunks_reused) == (3, 0)
    per_doc = first.chunks_embedded // 3
    assert per_doc >= 6

    paragraphs["cook"][2] = "Brush the loaf with egg wash before it goes in the oven."
    (docs / "cook.md").write_text("\n\n".join(paragraphs["cook"]))
    (docs / "law.md").unlink()
    os.utime(docs / "aero.md", ns=(time.time_ns(), time.time_ns() + 10**9))  # touched only
    p = pending(store)
    assert (p.changed, p.deleted) == (2, 1) and p.oldest_s > 0

    second = ix.ingest(docs)
    assert (second.added, second.changed, second.unchanged, second.deleted) == (0, 1, 1, 1)
    assert 1 <= second.chunks_embedded <= 2 < per_doc  # the changed paragraph's chunk(s)
    assert second.chunks_reused >= per_doc - 2
    assert set(store.documents("default")) == {"aero.md", "cook.md"}
    r = Retriever(store)
    assert r.search("egg wash oven", tenant="default", k=1)[0].doc_id == "cook.md"
    assert all(
        h.doc_id != "law.md" for h in r.search("tenant lease deposit", tenant="default", k=50)
    )
    assert pending(store) == pending(store).__class__(0, 0, 0, 0.0, 0)
    stats = store.stats()
    assert stats.documents == 2 and stats.vectors[ix.model.name] == stats.chunks


def test_changing_the_chunker_cuts_every_document_again(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(TOPICS["aero"] * 4)
    store = SqliteStore(tmp_path / "rag.db")
    _indexer(store, size=48).ingest(docs)
    report = _indexer(store, size=96).ingest(docs)
    assert report.unchanged == 0 and report.changed == 1


# -- search ----------------------------------------------------------------------------


def test_one_tenant_never_sees_another_tenants_chunks(store: Any) -> None:
    a, b = _indexer(store, "acme"), _indexer(store, "globex")
    a.add([Document(f"a{i}", TOPICS["aero"] + f" acme{i}", tenant="acme") for i in range(5)])
    b.add(
        [Document(f"b{i}", TOPICS["aero"] + f" globexonly{i}", tenant="globex") for i in range(5)]
    )
    r = Retriever(store)
    acme_ids = {h.chunk_id for h in r.search("boundary layer", tenant="acme", k=50)}
    for mode in ("hybrid", "vector", "keyword"):
        hits = r.search("boundary layer shock globexonly1", tenant="acme", k=50, mode=mode)
        assert hits and all(h.doc_id.startswith("a") for h in hits), mode
        assert {h.chunk_id for h in hits} <= acme_ids
    assert r.search("globexonly1", tenant="acme", mode="keyword") == []
    assert r.search("globexonly1", tenant="globex", mode="keyword")[0].doc_id == "b1"
    assert r.search("anything", tenant="initech") == []
    # deleting a document of one tenant leaves the other's namesake alone
    b.add([Document("a0", "globex's own a0 about kites", tenant="globex")])
    store.delete_documents("globex", ["a0"])
    assert "a0" in store.documents("acme")


def test_filters_narrow_results_and_a_selective_filter_still_fills_k(store: Any) -> None:
    ix = _indexer(store, size=24)
    words = TOPICS["aero"].split()
    rng = np.random.default_rng(7)
    docs = []
    for i in range(300):
        text = " ".join(rng.choice(words, size=30))
        tags = ("rare",) if i % 50 == 0 else ("common",)
        docs.append(
            Document(
                f"d{i}", text, tags=tags, meta={"lang": "en" if i % 2 else "de"}, modified=float(i)
            )
        )
    ix.add(docs)
    if isinstance(store, SqliteStore):
        store.exact_limit, store.few = 50, 4  # exercise the coarse scan and the widening
    r = Retriever(store)
    q = "shock waves in supersonic flow"
    rare = r.search(
        q, tenant="default", k=10, mode="vector", filters=Filters.parse({"tag": "rare"})
    )
    rare_chunks = [c for c in store.chunks("default", list(range(1, 10_000))).values()
                   if c.doc_id in {f"d{i}" for i in range(0, 300, 50)}]  # fmt: skip
    assert len(rare) == min(10, len(rare_chunks)) and len(rare) >= 6
    assert {h.doc_id for h in rare} <= {f"d{i}" for i in range(0, 300, 50)}
    # exact ranking among the allowed chunks, computed here
    model = store.active_model()
    qv = embedder("wordllama").query(q)
    truth = sorted(
        rare_chunks, key=lambda c: -float(embedder("wordllama").documents([c.text])[0] @ qv)
    )
    assert [h.chunk_id for h in rare][:5] == [c.chunk_id for c in truth][:5]
    lang = r.search(q, tenant="default", k=20, filters=Filters.parse({"meta": {"lang": "de"}}))
    assert len(lang) == 20 and all(int(h.doc_id[1:]) % 2 == 0 for h in lang)
    recent = r.search(
        q, tenant="default", k=20, mode="keyword", filters=Filters.parse({"modified_after": 290})
    )
    assert recent and all(int(h.doc_id[1:]) >= 290 for h in recent)
    one = r.search(q, tenant="default", k=5, filters=Filters.parse({"doc_id": ["d7", "d8"]}))
    assert one and {h.doc_id for h in one} <= {"d7", "d8"}
    assert model is not None
    if not isinstance(store, SqliteStore):  # through the HNSW index, not a scan
        store.index_only = True
        rare_filter = Filters.parse({"tag": "rare"})
        via_index = r.search(q, tenant="default", k=10, mode="vector", filters=rare_filter)
        assert [h.chunk_id for h in via_index] == [h.chunk_id for h in rare]
        store.iterative = False  # what pgvector does without iterative scans: too few rows
        short = r.search(q, tenant="default", k=10, mode="vector", filters=rare_filter)
        assert len(short) < len(rare)
    with pytest.raises(ValueError, match="unknown filter"):
        Filters.parse({"colour": "red"})


def test_hybrid_fuses_by_rank() -> None:
    fused = rrf([[1, 2, 3], [3, 4, 1]], [1.0, 1.0], k=60)
    assert [i for i, _ in fused][:2] == [1, 3]
    weighted = rrf([[1, 2], [2, 1]], [1.0, 3.0])
    assert weighted[0][0] == 2


def test_hybrid_finds_what_either_method_alone_misses(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "rag.db")
    ix = _indexer(store)
    ix.add([
        Document("code", "Error XJ-4471 means the flux capacitor relay tripped."),
        Document("prose", "The aircraft could not lift off because the wing stalled at low speed."),
        *[Document(f"noise{i}", f"Unrelated filler number {i} about gardens.") for i in range(30)],
    ])  # fmt: skip
    r = Retriever(store)
    hits = [h.doc_id for h in r.search("XJ-4471 plane failed to take off", tenant="default", k=2)]
    assert set(hits) == {"code", "prose"}


# -- model change ----------------------------------------------------------------------


def test_changing_the_model_reembeds_in_the_background_without_a_gap(
    store: Any, tmp_path: Path
) -> None:
    ix = _indexer(store)
    ix.add([Document(name, text * 3) for name, text in TOPICS.items()])
    ix.add([Document(f"f{i}", f"Filler number {i} about nothing much at all.") for i in range(60)])
    old = store.active_model()
    failures: list[str] = []
    served = [0]
    stop = threading.Event()
    reader = open_store(store.path if isinstance(store, SqliteStore) else store.url)

    def search() -> None:
        r = Retriever(reader)
        while not stop.is_set():
            try:
                hits = r.search("dough knead bake loaf", tenant="default", k=3)
            except Exception as exc:  # a search that fails across the switch is a gap too
                failures.append(repr(exc))
                continue
            if not hits or hits[0].doc_id != "cook":
                failures.append(repr(hits[:1]))
            served[0] += 1

    t = threading.Thread(target=search)
    t.start()
    try:
        e5 = embedder("e5")
        late: list[int] = []

        def progress(done: int, total: int) -> None:
            if not late:  # a document ingested mid-migration gets caught up before the switch
                ix.add([Document("late", TOPICS["law"])])
                late.append(done)

        model = reembed(store, e5, batch=16, progress=progress)
    finally:
        stop.set()
        t.join()
        reader.close()
    assert model is not None and model.name == e5.name and store.active_model() == model
    assert not failures and served[0] > 0
    stats = store.stats()
    assert set(stats.vectors) == {e5.name} and stats.vectors[e5.name] == stats.chunks
    assert old is not None and old.name not in stats.vectors
    r = Retriever(store)
    assert r.search("written notice lease deposit", tenant="default", k=2, mode="vector")[
        0
    ].doc_id in {"law", "late"}
    with pytest.raises(Exception, match="move the store"):
        _indexer(store)  # ingesting with the old model now is refused, not mixed in


# -- status, CLI, yardsticks -----------------------------------------------------------


def test_cli_ingest_search_status(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in TOPICS.items():
        (docs / f"{name}.txt").write_text(text)
    (docs / "bad.txt").write_bytes(b"\xff\xfe\x00\x01")
    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    out = runner.invoke(app, ["rag", "ingest", str(docs), "--store", db, "--tenant", "t1"])
    assert out.exit_code == 1 and "bad.txt" in out.output and "3 added" in out.output
    out = runner.invoke(
        app, ["rag", "search", "knead dough", "--store", db, "--tenant", "t1", "--json", "-k", "1"]
    )
    assert out.exit_code == 0 and '"cook.txt"' in out.output
    (docs / "cook.txt").write_text(TOPICS["cook"] + " Sourdough needs a starter.")
    out = runner.invoke(app, ["rag", "status", "--store", db, "--prometheus"])
    assert out.exit_code == 0
    assert "fleetpilot_rag_pending_changes 1.0" in out.output
    assert "fleetpilot_rag_documents 3.0" in out.output
    out = runner.invoke(app, ["rag", "search", "x", "--store", db, "--mode", "nope"])
    assert out.exit_code == 2 and "unknown mode" in out.output
    missing = str(tmp_path / "nowhere.db")
    out = runner.invoke(app, ["rag", "search", "x", "--store", missing])
    assert out.exit_code == 2 and "no RAG store" in out.output
    assert not Path(missing).exists()  # a reader never creates an empty store


def test_watch_picks_up_a_change(tmp_path: Path) -> None:
    from rich.console import Console

    from fleetpilot.rag.commands import run_watch

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(TOPICS["aero"])
    db = str(tmp_path / "w.db")
    stop = threading.Event()
    t = threading.Thread(
        target=run_watch, args=(docs,),
        kwargs=dict(store_url=db, tenant="default", embedder_spec=None, strategy="recursive",
                    size=64, interval_s=0.05, metrics_port=None, console=Console(quiet=True),
                    stop=stop),
    )  # fmt: skip
    t.start()
    try:
        reader = SqliteStore(db)
        deadline = time.time() + 20
        while "a.txt" not in reader.documents("default") and time.time() < deadline:
            time.sleep(0.05)
        (docs / "b.txt").write_text(TOPICS["cook"])
        while "b.txt" not in reader.documents("default") and time.time() < deadline:
            time.sleep(0.05)
        assert set(reader.documents("default")) == {"a.txt", "b.txt"}
        reader.close()
    finally:
        stop.set()
        t.join(10)


def test_yardsticks() -> None:
    assert ndcg(["a", "b"], {"a": 3}, 10) == pytest.approx(1.0)
    assert ndcg(["b", "a"], {"a": 1}, 10) == pytest.approx(1 / np.log2(3))
    assert recall(["a", "x"], ["a", "b"], 100) == 0.5
    r, p, iou = span_scores([(0, 10), (5, 20)], [(10, 30)])
    assert (r, p, iou) == (0.5, 0.5, pytest.approx(10 / 30))


def _live_chunks(store: Any, tenant: str) -> list[tuple[int, str]]:
    if isinstance(store, SqliteStore):
        return store._rows("select id, text from chunks where tenant = ?", (tenant,))
    return store._rows("select id, text from rag_chunks where tenant = %s", (tenant,))


def _reference_bm25(chunks: list[tuple[int, str]], query: str) -> dict[int, float]:
    """BM25 written from its definition over every live chunk (k1 1.2, b 0.75, Lucene's
    idf), for checking the segmented index against."""
    terms = {cid: document_terms(text) for cid, text in chunks}
    n = len(terms)
    avg = sum(len(t) for t in terms.values()) / n
    scores: dict[int, float] = {}
    for q in query_terms(query):
        holding = {cid: t.count(q) for cid, t in terms.items() if q in t}
        idf = np.log(1 + (n - len(holding) + 0.5) / (len(holding) + 0.5))
        for cid, tf in holding.items():
            norm = 1.2 * (1 - 0.75 + 0.75 * len(terms[cid]) / avg)
            scores[cid] = scores.get(cid, 0.0) + idf * tf * 2.2 / (tf + norm)
    return scores


def test_keyword_index_ranks_by_bm25_through_merges_edits_and_deletes(store: Any) -> None:
    """Many small writes with a fanout of 2 force cascades of segment merges; edits and
    deletes leave masked chunks behind in merged segments.  The ranking must stay exactly
    BM25 over the live chunks, per tenant, and the segment count logarithmic."""
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(60)] + ["turbine", "blade", "ceramic", "coating"]
    store._kw.fanout = 2
    ix = _indexer(store, tenant="t1", size=24)
    other = _indexer(store, tenant="t2", size=24)

    def text(n: int) -> str:
        return " ".join(rng.choice(words, n, p=None)) + "."

    docs = [Document(f"d{i}", " ".join(text(10) for _ in range(3)), tenant="t1") for i in range(40)]
    for d in docs:
        ix.add([d])
    other.add([Document("x", "ceramic ceramic ceramic turbine", tenant="t2")])
    for i in range(0, 40, 3):  # edits: a chunk's old postings stay behind, masked
        ix.add([Document(f"d{i}", docs[i].text + " ceramic coating", tenant="t1")])
    store.delete_documents("t1", [f"d{i}" for i in range(1, 40, 5)])
    live = _live_chunks(store, "t1")
    for query in ("turbine blade", "ceramic coating w3", "w7 w8 w9 w10 w11", "nothing-here"):
        want = _reference_bm25(live, query)
        got = store.keyword_search("t1", query, 1000, Filters())
        assert {i for i, _ in got} == set(want), query
        for i, s_ in got:
            assert s_ == pytest.approx(want[i], rel=1e-9), (query, i)
        assert [s_ for _, s_ in got] == sorted((s_ for _, s_ in got), reverse=True)
    segs = store._rows(
        (
            "select count(*) from kw_segments where tenant = ?"
            if isinstance(store, SqliteStore)
            else "select count(*) from rag_kw_segments where tenant = %s"
        ),
        ("t1",),
    )[0][0]
    assert segs <= 2 * int(np.log2(len(live)) + 2)
    # the other tenant's counts are its own: one chunk, so its idf is the one-chunk idf
    (only,) = store.keyword_search("t2", "ceramic", 10, Filters())
    assert only[1] == pytest.approx(_reference_bm25(_live_chunks(store, "t2"), "ceramic")[only[0]])


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_store_from_before_the_keyword_index_is_indexed_when_opened(
    kind: str, tmp_path: Path, request: Any
) -> None:
    url = str(tmp_path / "rag.db") if kind == "sqlite" else request.getfixturevalue("postgres_url")
    prefix = "kw_" if kind == "sqlite" else "rag_kw_"
    store = open_store(url)
    _indexer(store).add([Document(k, v) for k, v in TOPICS.items()])
    before = store.keyword_search("default", "shock waves dough", 10, Filters())
    with store._write() as cur:  # type: ignore[attr-defined]
        run = store._db.execute if cur is None else cur.execute  # type: ignore[attr-defined]
        for table in ("state", "segments", "postings", "chunks", "gone"):
            run(f"delete from {prefix}{table}")
    assert store.keyword_search("default", "shock waves dough", 10, Filters()) == []
    store.close()
    reopened = open_store(url)
    assert reopened.keyword_search("default", "shock waves dough", 10, Filters()) == before
    assert len(before) == 2
    reopened.close()


def test_concurrent_writers_keep_the_keyword_index_whole(postgres_url: str) -> None:
    """Two processes' worth of writers (one connection each) ingest into one tenant at
    once, with merges forced on every few writes: no write may be lost or doubled in the
    index, whichever transaction merges what."""
    stores = [open_store(postgres_url) for _ in range(4)]
    for s in stores:
        s._kw.fanout = 2  # type: ignore[attr-defined]
    errors: list[BaseException] = []

    def ingest(store: Any, who: int) -> None:
        try:
            ix = _indexer(store, tenant="t", size=24)
            for i in range(25):
                text = f"turbine{who} blade{i} " + TOPICS["aero"]
                ix.add([Document(f"{who}-{i}", text, tenant="t")])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=ingest, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    live = _live_chunks(stores[0], "t")
    for query in ("turbine0 blade3", "turbine1", "shock waves boundary"):
        want = _reference_bm25(live, query)
        got = dict(stores[0].keyword_search("t", query, 1000, Filters()))
        assert set(got) == set(want), query
        for i, s_ in got.items():
            assert s_ == pytest.approx(want[i], rel=1e-9)
    for s in stores:
        s.close()
