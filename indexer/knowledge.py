"""Knowledge-base documents (guidelines, drug information) → cited chunks.

Pure functions. A document is Markdown or plain text (a PDF's text is extracted by the
caller). It is split at its headings; every chunk keeps its document title, section,
source name and citation, so an answer drawn from it can say where it comes from. The
citation is the document's ``Source:`` line, or a section's own ``Source:`` line. Chunk ids
come from the source name, section and position: adding a document again overwrites it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from indexer.chunking import windows
from kernel.events import deterministic_id
from kernel.rendering import note_sections

_SOURCE = re.compile(r"^\s*Source:\s*(?P<citation>.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_TITLE = re.compile(r"^\s*#\s+(?P<title>.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class KnowledgeChunk:
    """One retrievable passage of a knowledge document, with its citation."""

    id: str
    source: str  # the document's name (file name)
    title: str
    section: str
    citation: str
    chunk_no: int
    text: str


def knowledge_chunks(text: str, *, source: str) -> list[KnowledgeChunk]:
    """The chunks of one document; ``[]`` when it has no text.

    Raises:
        ValueError: a document without a citation (a knowledge base answer must say where
            it comes from).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return []
    title_match = _TITLE.search(text)
    title = title_match["title"] if title_match else source
    doc_citation = _citation(text.split("\n## ", 1)[0])
    out: list[KnowledgeChunk] = []
    for heading, body in note_sections(text):
        if heading == title:
            heading = ""
        citation = _citation(body) or doc_citation
        if not citation:
            raise ValueError(f"{source}: section {heading or title!r} has no 'Source:' line")
        content = _SOURCE.sub("", body).strip()
        if not content:
            continue
        prefix = f"{title} - {heading}:" if heading else f"{title}:"
        for window in windows(content):
            n = len(out)
            out.append(
                KnowledgeChunk(
                    id=deterministic_id("Knowledge", source, str(n)),
                    source=source,
                    title=title,
                    section=heading,
                    citation=citation,
                    chunk_no=n,
                    text=f"{prefix} {window}",
                )
            )
    return out


def _citation(text: str) -> str:
    m = _SOURCE.search(text)
    return m["citation"] if m else ""
