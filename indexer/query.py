"""Contextual query: patient-scoped filters and the search behind `POST /query`.

`build_filter` is pure; `ContextualQuery` ties the embedder and the vector store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from indexer.chunking import Chunk


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result with its citation (the resource it came from)."""

    resource_id: str
    resource_type: str
    text: str
    score: float
    date: str
    chunk_no: int = 0
    section: str = ""
    version: str = ""


SearchMode = Literal["hybrid", "dense", "bm25"]
# Measured on the labelled Synthea questions (bench/retrieval.py): dense 0.942 recall@5,
# hybrid 0.850, BM25 0.649; all three find names typed as written. Hybrid and BM25 stay
# selectable per query.
DEFAULT_MODE: SearchMode = "dense"


class VectorStore(Protocol):
    """Where chunks live (Milvus behind it)."""

    def upsert(self, chunks: Sequence[Chunk], vectors: npt.NDArray[np.float32]) -> None:
        """Insert or overwrite chunks by id."""

    def retire(self, keep: Mapping[str, int]) -> None:
        """For each resource id, remove its chunks numbered ``keep[id]`` and above (0: all)."""

    def unchanged(self, chunks: Sequence[Chunk]) -> set[str]:
        """Ids of those ``chunks`` the store already holds as they are (all but the version)."""

    def flush(self) -> None:
        """Seal recent writes so searches over them are fast and durable."""

    def search(
        self,
        vector: npt.NDArray[np.float32],
        expr: str,
        k: int,
        *,
        question: str = "",
        mode: SearchMode = DEFAULT_MODE,
    ) -> list[Hit]:
        """The k best chunks among those matching ``expr`` (dense, BM25 or both fused)."""

    def entries(self, expr: str, limit: int) -> list[TimelineEntry]:
        """First chunks (``chunk_no == 0``) matching ``expr``, newest first, at most ``limit``."""


@dataclass(frozen=True, slots=True)
class KnowledgeHit:
    """One knowledge-base passage with its citation (document, section, published source)."""

    source: str
    title: str
    section: str
    citation: str
    text: str
    score: float


class KnowledgeBase(Protocol):
    """Where knowledge-base passages live (Milvus behind it)."""

    def search(
        self, vector: npt.NDArray[np.float32], question: str, k: int, *, mode: SearchMode = DEFAULT_MODE
    ) -> list[KnowledgeHit]:
        """The k passages that best answer ``question``."""


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One resource on a patient's timeline (its first chunk: the line a chart would show)."""

    resource_id: str
    resource_type: str
    text: str
    date: str
    effective: int


class TextEmbedder(Protocol):
    """Text → vectors."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts."""


def quote(value: str) -> str:
    """A Milvus string literal: backslash, double quote and line breaks escaped, every other
    character as it is (Milvus' expression parser knows no ``\\uXXXX`` escapes: JSON quoting
    failed on any non-ASCII or control character)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def build_filter(
    patient_id: str,
    *,
    types: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> str:
    """The Milvus boolean expression scoping a search to one patient (and optionally types/time)."""
    if not patient_id:
        raise ValueError("a patient id is required")
    parts = [f"patient == {quote(patient_id)}"]
    if types:
        parts.append(f"resource_type in [{', '.join(quote(t) for t in types)}]")
    if since is not None:
        parts.append(f"effective >= {int(since.timestamp())}")
    if until is not None:
        parts.append(f"effective <= {int(until.timestamp())}")
    return " and ".join(parts)


class ContextualQuery:
    """Patient-scoped search of the record, and search of the knowledge base."""

    def __init__(
        self, embedder: TextEmbedder, store: VectorStore, knowledge: KnowledgeBase | None = None
    ) -> None:
        self._embedder = embedder
        self._store = store
        self._knowledge = knowledge

    def knowledge(self, question: str, *, k: int = 5, mode: SearchMode = DEFAULT_MODE) -> list[KnowledgeHit]:
        """The knowledge-base passages that best answer the question (none without a knowledge base)."""
        if self._knowledge is None:
            return []
        vector = self._embedder.embed([question])[0]
        return self._knowledge.search(vector, question, k, mode=mode)

    def search(
        self,
        patient_id: str,
        question: str,
        *,
        k: int = 5,
        types: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        mode: SearchMode = DEFAULT_MODE,
    ) -> list[Hit]:
        """The k chunks of this patient's record that best answer the question."""
        expr = build_filter(patient_id, types=types, since=since, until=until)
        vector = self._embedder.embed([question])[0]
        return self._store.search(vector, expr, k, question=question, mode=mode)

    def timeline(
        self,
        patient_id: str,
        *,
        types: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 200,
    ) -> list[TimelineEntry]:
        """The patient's resources, newest first (undated ones last)."""
        expr = build_filter(patient_id, types=types, since=since, until=until)
        return self._store.entries(f"{expr} and chunk_no == 0", limit)
