"""Files into documents: plain text, Markdown, HTML and PDF.

A document's id is stable: its path relative to the directory it was ingested from (or
an id the caller gives), so re-ingesting the same tree finds the same documents.  A file
that cannot be read — not UTF-8, a broken or image-only PDF, nothing in it — raises
:class:`~fleetpilot.errors.DocumentUnreadable` with the reason; :func:`scan` lists what a
directory holds by ``stat`` alone, so a re-ingest opens only the files that changed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetpilot.errors import DocumentUnreadable

__all__ = ["SUFFIXES", "Document", "FileEntry", "content_hash", "load_file", "scan"]

SUFFIXES = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


def content_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    tenant: str = "default"
    source: str = ""  # where it came from: a path, a URL
    modified: float = 0.0  # seconds since the epoch
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # title, format, anything given

    @property
    def hash(self) -> str:
        return content_hash(self.text)


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file as ``stat`` sees it: enough to tell that it has not changed without reading."""

    path: Path
    id: str
    mtime_ns: int
    size: int

    @property
    def stamp(self) -> str:
        return f"{self.mtime_ns}:{self.size}"


def scan(root: Path) -> Iterator[FileEntry]:
    """Every ingestible file under ``root`` (hidden files and folders skipped), in a stable
    order; ``root`` may also be one file."""
    root = Path(root)
    if root.is_file():
        st = root.stat()
        yield FileEntry(root, root.name, st.st_mtime_ns, st.st_size)
        return
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or directory")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in SUFFIXES:
                continue
            path = Path(dirpath, name)
            try:
                st = path.stat()
            except OSError:
                continue  # gone between the listing and the stat
            yield FileEntry(path, path.relative_to(root).as_posix(), st.st_mtime_ns, st.st_size)


def load_file(
    path: Path,
    *,
    doc_id: str | None = None,
    tenant: str = "default",
    tags: tuple[str, ...] = (),
) -> Document:
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DocumentUnreadable(str(path), f"unsupported file type {path.suffix or '(none)'}")
    try:
        data = path.read_bytes()
        modified = path.stat().st_mtime
    except OSError as exc:
        raise DocumentUnreadable(str(path), exc.strerror or str(exc)) from None
    meta: dict[str, Any] = {"format": kind}
    if kind == "pdf":
        text, title = _pdf(path, data)
    else:
        raw = _decode(path, data)
        text, title = _html(raw) if kind == "html" else (raw, _markdown_title(raw))
    if title:
        meta["title"] = title
    text = _tidy(text)
    if not text.strip():
        raise DocumentUnreadable(str(path), "no text in it")
    return Document(
        id=doc_id or path.name,
        text=text,
        tenant=tenant,
        source=str(path),
        modified=modified,
        tags=tags,
        meta=meta,
    )


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data[:4096]:
        raise DocumentUnreadable(str(path), "binary content, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentUnreadable(
            str(path), f"not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})"
        ) from None


def _markdown_title(text: str) -> str | None:
    m = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def _html(raw: str) -> tuple[str, str | None]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else None
    for level in range(1, 7):  # headings survive as Markdown, so chunking sees the structure
        for h in soup.find_all(f"h{level}"):
            h.insert_before("\n\n" + "#" * level + " ")
            h.insert_after("\n\n")
    for block in soup.find_all(["p", "li", "tr", "pre", "blockquote", "div", "br"]):
        block.insert_after("\n\n" if block.name in ("p", "pre", "blockquote") else "\n")
    body = soup.body or soup
    return body.get_text(""), title


def _pdf(path: Path, data: bytes) -> tuple[str, str | None]:
    import io
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its repairs are not our reader's news
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentUnreadable(str(path), "encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except DocumentUnreadable:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentUnreadable(str(path), f"unreadable PDF ({exc})") from None
    if not any(p.strip() for p in pages):
        raise DocumentUnreadable(str(path), "no text layer in the PDF (scanned images?)")
    return "\n\n".join(pages), title


_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TRAILING = re.compile(r"[ \t]+\n")


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BLANKS.sub("\n\n", _TRAILING.sub("\n", text)).strip("\n")
