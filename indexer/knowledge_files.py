"""Knowledge-base files in: Markdown, text and PDF documents, and the starter knowledge base.

The adapter around `indexer.knowledge`: reads files (PDF text through pypdf), chunks them,
embeds them and writes each document as a whole into the knowledge-base collection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from indexer.knowledge import knowledge_chunks
from indexer.milvus_store import KnowledgeStore
from indexer.query import TextEmbedder, quote

log = logging.getLogger(__name__)
STARTER = Path(__file__).with_name("knowledge_base")
SUFFIXES = (".md", ".markdown", ".txt", ".pdf")


@dataclass(frozen=True, slots=True)
class Added:
    """What adding one file did."""

    path: Path
    chunks: int
    error: str = ""


def document_text(path: Path) -> str:
    """The text of a Markdown, text or PDF file.

    Raises:
        ValueError: a file type the knowledge base does not read, or an unreadable PDF.
        OSError: the file cannot be read.
    """
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        try:
            return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
        except PdfReadError as exc:
            raise ValueError(f"{path.name} is not a readable PDF") from exc
    if suffix in SUFFIXES:
        return path.read_bytes().decode("utf-8", errors="replace")
    raise ValueError(f"{path.name}: only {', '.join(SUFFIXES)} files are read")


def files_under(paths: list[Path]) -> list[Path]:
    """The readable files among ``paths`` and in the folders among them, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES))
        else:
            out.append(path)
    return out


def add_files(paths: list[Path], store: KnowledgeStore, embedder: TextEmbedder) -> list[Added]:
    """Add (or replace) each file as one document; a bad file is reported and skipped."""
    results: list[Added] = []
    for path in files_under(paths):
        try:
            chunks = knowledge_chunks(document_text(path), source=path.name)
        except (ValueError, OSError) as exc:
            results.append(Added(path, 0, str(exc)))
            continue
        store.replace_source(path.name, chunks, embedder.embed([c.text for c in chunks]))
        results.append(Added(path, len(chunks)))
    return results


def load_starter(store: KnowledgeStore, embedder: TextEmbedder) -> int:
    """Add the starter documents the knowledge base does not hold yet (all of them into an empty
    one; after an upgrade, the new ones); the passages added. A starter document already there is
    left as it is, so a local edit of it stays."""
    missing = [p for p in files_under([STARTER]) if not store.count(f"source == {quote(p.name)}")]
    if not missing:
        return 0
    added = add_files(missing, store, embedder)
    for failed in (a for a in added if a.error):
        log.error("starter knowledge base: %s", failed.error)
    return sum(a.chunks for a in added)
