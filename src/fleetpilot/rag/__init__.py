"""The RAG data layer: documents, their chunks, vectors and keyword index in one database.

- :mod:`.documents` reads text, Markdown, HTML and PDF files into :class:`~.documents.Document`;
- :mod:`.chunking` cuts a document into chunks (fixed, recursive, semantic), with the
  character span of each, counted in tokens by :mod:`.tokens` (offline);
- :mod:`.embed` is the one seam for embedding models (offline ones that ship in a wheel,
  or any OpenAI-compatible ``/v1/embeddings``);
- :mod:`.store` is the ``VectorStore`` seam, with SQLite + sqlite-vec (:mod:`.sqlite`, the
  embedded default) and Postgres + pgvector (:mod:`.postgres`), each keeping the same BM25
  keyword index (:mod:`.bm25`, words cut by :mod:`.keywords`) in its own tables;
- :mod:`.indexer` keeps a store fresh (content hashes: only changed chunks are embedded) and
  :mod:`.migrate` moves it to a new embedding model while the old one keeps serving;
- :mod:`.search` answers a query (vector, keyword, or both fused by :mod:`.fusion`).

Nothing here touches the gateway; its retrieval stage and ``/v1/retrieve`` are built on
:class:`~.search.Retriever`.
"""
