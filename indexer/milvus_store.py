"""Milvus adapter (Milvus Lite file by default, a Milvus server in production).

One collection of chunks with the patient as partition key, so a patient-scoped search
touches one partition. Dense vectors (cosine) plus a BM25 sparse field that Milvus derives
from the chunk text; `search` runs dense, BM25 or both fused by reciprocal rank (RRF).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pymilvus import AnnSearchRequest, DataType, Function, FunctionType, MilvusClient, RRFRanker
from pymilvus.exceptions import MilvusException

from indexer.chunking import CODES_MAX, Chunk, chunk_id
from indexer.errors import VectorStoreError
from indexer.knowledge import KnowledgeChunk
from indexer.query import DEFAULT_MODE, Hit, KnowledgeHit, SearchMode, TimelineEntry, quote

log = logging.getLogger(__name__)
T = TypeVar("T")
TEXT_MAX = 8192
# Reciprocal rank fusion constant (the usual 60: a rank's weight is 1 / (60 + rank)).
RRF_K = 60
# Each of the two searches fused by RRF fetches this many times k candidates.
FUSION_DEPTH = 4
# HNSW (a Milvus server): graph degree and build breadth, and the search breadth (ef) floors;
# FLAT ignores search params. A patient-scoped search reaches recall@10 1.000 at ef 128; one
# over the whole collection needs 512 at 1M chunks (0.737 at 128, 0.972 at 512, p99 50 ms;
# `make bench-milvus-server`).
HNSW_BUILD = {"M": 16, "efConstruction": 200}
HNSW_EF = 128
HNSW_EF_UNSCOPED = 512
# Rows per page when a query reads every matching row.
QUERY_PAGE = 4_096
_OUTPUT = ["resource_id", "resource_type", "text", "effective_text", "chunk_no", "section", "version"]


def index_for(uri: str | None, configured: str | None = None) -> str:
    """The dense index type: as configured, else FLAT on Milvus Lite and HNSW on a server.

    On Lite, AUTOINDEX lost results under a patient filter (recall@10 0.632 against exact
    search at 100k chunks, `bench/index.py`) and searched no faster than FLAT, which is exact.
    """
    if configured:
        return configured
    return "HNSW" if uri else "FLAT"


def server_arguments(
    uri: str, token: str | None = None, tls_ca_file: Path | None = None, tls_server_name: str | None = None
) -> dict[str, Any]:
    """MilvusClient's arguments for a server: its token (``user:password``) and, with a CA file,
    TLS (the server's certificate checked against it, under ``tls_server_name`` when the
    certificate names another host than the URI)."""
    found: dict[str, Any] = {"uri": uri, "token": token or ""}
    if tls_ca_file is not None:
        found |= {"secure": True, "server_pem_path": str(tls_ca_file)}
        if tls_server_name:
            found["server_name"] = tls_server_name
    return found


def connect(
    uri: str | None,
    *,
    lite_path: Path,
    token: str | None = None,
    tls_ca_file: Path | None = None,
    tls_server_name: str | None = None,
) -> MilvusClient:
    """A Milvus client: the server at ``uri`` (`server_arguments`), else Milvus Lite at ``lite_path``."""
    if uri:
        return MilvusClient(**server_arguments(uri, token, tls_ca_file, tls_server_name))
    lite_path.parent.mkdir(parents=True, exist_ok=True)
    return MilvusClient(str(lite_path))


FIELDS = (
    "id",
    "patient",
    "resource_id",
    "resource_type",
    "effective",
    "effective_text",
    "chunk_no",
    "encounter",
    "codes",
    "version",
    "section",
    "text",
    "vector",
    "sparse",
)


def search_breadth(expr: str, k: int) -> int:
    """HNSW ``ef`` for a search returning ``k`` under filter ``expr`` (empty: unscoped)."""
    return max(HNSW_EF if expr else HNSW_EF_UNSCOPED, k)


def _ranked_once(
    client: MilvusClient,
    collection: str,
    vector: npt.NDArray[np.float32],
    question: str,
    expr: str,
    k: int,
    mode: SearchMode,
    output: list[str],
) -> list[dict[str, Any]]:
    """Dense, BM25 or RRF-fused hybrid search over one collection's ``vector``/``sparse`` fields."""
    try:
        if mode == "dense" or not question.strip():
            result = client.search(
                collection,
                data=[vector.tolist()],
                anns_field="vector",
                filter=expr,
                limit=k,
                output_fields=output,
                search_params={"metric_type": "COSINE", "params": {"ef": search_breadth(expr, k)}},
            )
        elif mode == "bm25":
            result = client.search(
                collection,
                data=[question],
                anns_field="sparse",
                filter=expr,
                limit=k,
                output_fields=output,
                search_params={"metric_type": "BM25"},
            )
        else:
            depth = k * FUSION_DEPTH
            dense = AnnSearchRequest(
                data=[vector.tolist()],
                anns_field="vector",
                param={"metric_type": "COSINE", "params": {"ef": search_breadth(expr, depth)}},
                limit=depth,
                expr=expr,
            )
            sparse = AnnSearchRequest(
                data=[question], anns_field="sparse", param={"metric_type": "BM25"}, limit=depth, expr=expr
            )
            result = client.hybrid_search(
                collection, [dense, sparse], ranker=RRFRanker(RRF_K), limit=k, output_fields=output
            )
    except MilvusException as exc:
        if _not_loaded(exc):
            raise  # `_ranked` loads the collection and asks again
        raise VectorStoreError("Milvus search failed") from exc
    return list(result[0])


def _not_loaded(exc: MilvusException) -> bool:
    """Milvus answered that the collection is not in memory (after its restart)."""
    text = str(getattr(exc, "message", "") or exc).lower()
    return "released" in text or "not loaded" in text


def _reloading(client: MilvusClient, collection: str, call: Callable[[], T]) -> T:
    """A read; when Milvus came back without the collection loaded (a restarted Milvus Lite
    server does), load it and read once more instead of failing every search until restart."""
    try:
        return call()
    except MilvusException as exc:
        if not _not_loaded(exc):
            raise
        log.warning("Milvus collection %s was not loaded (Milvus restarted?): loading it", collection)
        client.load_collection(collection)
        return call()


def _ranked(
    client: MilvusClient,
    collection: str,
    vector: npt.NDArray[np.float32],
    question: str,
    expr: str,
    k: int,
    mode: SearchMode,
    output: list[str],
) -> list[dict[str, Any]]:
    """`_ranked_once`, loading the collection again if a restarted Milvus released it."""
    try:
        return _reloading(
            client,
            collection,
            lambda: _ranked_once(client, collection, vector, question, expr, k, mode, output),
        )
    except MilvusException as exc:
        raise VectorStoreError("Milvus search failed") from exc


def _text_schema(schema: Any, dim: int) -> None:
    """The text, dense vector and BM25 sparse fields every collection of ours has."""
    schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX, enable_analyzer=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="text_bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )


def _create(client: MilvusClient, collection: str, schema: Any, index_type: str, embedding: str) -> None:
    """Create the collection with its indexes and its embedding identity in one call: a second
    process starting beside this one never sees it without the identity (read as the unmarked
    fp32 of an older clinstream, and refused)."""
    index = client.prepare_index_params()
    params = HNSW_BUILD if index_type == "HNSW" else {}
    index.add_index("vector", index_type=index_type, metric_type="COSINE", params=params)
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(
        collection, schema=schema, index_params=index, properties={EMBEDDING_PROPERTY: embedding}
    )


def _check_layout(collection: str, described: Mapping[str, Any], fields: Sequence[str], dim: int) -> None:
    found = {f["name"]: f for f in described["fields"]}
    missing = sorted(set(fields) - set(found))
    have = (found.get("vector") or {}).get("params", {}).get("dim")
    if missing or (have is not None and int(have) != dim):
        raise VectorStoreError(
            f"collection {collection} has another layout (missing {missing}, dimension {have}); "
            "point the collection setting at a new name and index again"
        )


def _newest_first(row: dict[str, Any]) -> tuple[bool, int, str]:
    """Sort key: dated rows newest first, then undated ones, ties by resource id."""
    effective = int(row["effective"])
    return (effective == 0, -effective, str(row["resource_id"]))


PROBE_IDS = 1000
"""Chunk ids per primary-key query."""
EMBEDDING_PROPERTY = "clinstream.embedding"
# Collections made before the property existed hold the only embedding clinstream had then.
UNMARKED_EMBEDDING = "all-MiniLM-L6-v2/fp32/384"


def recorded_precision(client: MilvusClient, collection: str) -> str | None:
    """The precision of the vectors ``collection`` was built with (``fp32``, ``int8``), or None
    when it does not exist yet."""
    try:
        if not client.has_collection(collection):
            return None
        properties = client.describe_collection(collection).get("properties") or {}
    except MilvusException as exc:
        raise VectorStoreError(f"cannot read collection {collection}") from exc
    parts = str(properties.get(EMBEDDING_PROPERTY, UNMARKED_EMBEDDING)).split("/")
    return parts[1] if len(parts) == 3 else None


def _check_embedding(collection: str, described: Mapping[str, Any], embedding: str) -> None:
    properties = described.get("properties") or {}
    found = str(properties.get(EMBEDDING_PROPERTY, UNMARKED_EMBEDDING))
    if found != embedding:
        raise VectorStoreError(
            f"collection {collection} holds {found} vectors, not {embedding}: vectors of two models"
            " or precisions are not comparable; point the collection setting at a new name and index again"
        )


_PREPARE_ATTEMPTS = 5


class _Collection:
    """One Milvus collection of ours: created with its layout if missing, refused if another
    layout (an older clinstream, another embedding dimension) or another embedding (model,
    precision) is there, then loaded."""

    fields: tuple[str, ...] = ()

    def __init__(
        self,
        client: MilvusClient,
        collection: str,
        dimension: int,
        *,
        index_type: str = "FLAT",
        embedding: str = UNMARKED_EMBEDDING,
    ) -> None:
        self._client = client
        self.collection = collection
        self._dim = dimension
        self._index_type = index_type
        self.embedding = embedding

    def ensure_collection(self) -> None:
        """Create the collection and its indexes if missing; load it.

        Raises:
            VectorStoreError: Milvus is unreachable, or the collection has another layout.
        """
        for attempt in range(_PREPARE_ATTEMPTS):
            try:
                self._prepare()
                return
            except MilvusException as exc:
                # Another indexer may be creating the same collection this very moment (two
                # instances starting together): look again, with its work done, before giving up.
                if attempt == _PREPARE_ATTEMPTS - 1:
                    raise VectorStoreError(f"cannot prepare collection {self.collection}") from exc
                log.warning("preparing Milvus collection %s failed (%s); looking again", self.collection, exc)
                time.sleep(0.5 * (attempt + 1))

    def _prepare(self) -> None:
        if not self._client.has_collection(self.collection):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            self._add_fields(schema)
            _text_schema(schema, self._dim)
            _create(self._client, self.collection, schema, self._index_type, self.embedding)
            log.info("created Milvus collection %s (%s)", self.collection, self.embedding)
        else:
            described = self._client.describe_collection(self.collection)
            _check_layout(self.collection, described, self.fields, self._dim)
            _check_embedding(self.collection, described, self.embedding)
        self._client.load_collection(self.collection)

    def count(self, expr: str = "") -> int:
        """Number of rows (chunks, passages) matching ``expr`` (all when empty)."""
        try:
            rows = _reloading(
                self._client,
                self.collection,
                lambda: self._client.query(self.collection, filter=expr, output_fields=["count(*)"]),
            )
        except MilvusException as exc:
            raise VectorStoreError("Milvus count failed") from exc
        return int(rows[0]["count(*)"])

    def _add_fields(self, schema: Any) -> None:
        raise NotImplementedError


class MilvusStore(_Collection):
    """`VectorStore` over the collection of patient record chunks."""

    fields = FIELDS

    def _add_fields(self, schema: Any) -> None:
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("patient", DataType.VARCHAR, max_length=64, is_partition_key=True)
        schema.add_field("resource_id", DataType.VARCHAR, max_length=128)
        schema.add_field("resource_type", DataType.VARCHAR, max_length=64)
        schema.add_field("effective", DataType.INT64)
        schema.add_field("effective_text", DataType.VARCHAR, max_length=64)
        schema.add_field("chunk_no", DataType.INT64)
        schema.add_field("encounter", DataType.VARCHAR, max_length=128)
        schema.add_field("codes", DataType.VARCHAR, max_length=CODES_MAX)
        schema.add_field("version", DataType.VARCHAR, max_length=128)
        schema.add_field("section", DataType.VARCHAR, max_length=128)

    def upsert(self, chunks: Sequence[Chunk], vectors: npt.NDArray[np.float32]) -> None:
        """Insert or overwrite chunks by id."""
        if not chunks:
            return
        rows = [
            _row(c) | {"version": c.version[:128], "vector": vectors[i].tolist()}
            for i, c in enumerate(chunks)
        ]
        try:
            self._client.upsert(self.collection, rows)
        except MilvusException as exc:
            raise VectorStoreError("Milvus rejected an upsert") from exc

    def unchanged(self, chunks: Sequence[Chunk]) -> set[str]:
        """Ids of those ``chunks`` the collection already holds as they are: same text, same
        fields, all but the version (the message that wrote it first keeps its citation). A
        feed repeats most of its chunks (the patient and visit of every message): they need
        neither an embedding nor a write."""
        wanted = {c.id: _row(c) for c in chunks}
        rows = self._by_ids(list(wanted), COMPARED, strong=True)
        return {str(r["id"]) for r in rows if all(r.get(f) == wanted[str(r["id"])][f] for f in COMPARED)}

    def retire(self, keep: Mapping[str, int]) -> None:
        """For each resource id, remove its chunks numbered ``keep[id]`` and above (0: all):
        what an earlier, longer version left, or a resource taken out of the record.

        A resource's chunks are numbered from 0 without gaps, so it has chunks to remove only
        if its chunk number ``keep[id]`` exists: one primary-key probe for the whole batch finds
        those, and only they are deleted by a filter (a filtered delete reads the whole
        collection on Milvus Lite, 80–130 ms a call at 20,000–60,000 chunks)."""
        probes = {chunk_id(resource_id, count): resource_id for resource_id, count in keep.items()}
        stale = [probes[found] for found in self.existing(list(probes), strong=True)]
        by_count: dict[int, list[str]] = {}
        for resource_id in sorted(stale):
            by_count.setdefault(keep[resource_id], []).append(resource_id)
        try:
            for count, ids in sorted(by_count.items()):
                listed = ", ".join(quote(i) for i in ids)
                self._client.delete(
                    self.collection, filter=f"chunk_no >= {count} and resource_id in [{listed}]"
                )
        except MilvusException as exc:
            raise VectorStoreError("Milvus rejected a delete") from exc

    def flush(self) -> None:
        """Seal growing segments (searching them unsealed is slow on Milvus Lite)."""
        try:
            self._client.flush(self.collection)
        except MilvusException as exc:
            raise VectorStoreError("Milvus flush failed") from exc

    def search(
        self,
        vector: npt.NDArray[np.float32],
        expr: str,
        k: int,
        *,
        question: str = "",
        mode: SearchMode = DEFAULT_MODE,
    ) -> list[Hit]:
        """The k best chunks among those matching ``expr``: by the dense vector, by BM25 over
        ``question``, or both fused by reciprocal rank (hybrid; dense alone when there is no
        question text)."""
        result = _ranked(self._client, self.collection, vector, question, expr, k, mode, _OUTPUT)
        return [
            Hit(
                resource_id=h["entity"]["resource_id"],
                resource_type=h["entity"]["resource_type"],
                text=h["entity"]["text"],
                score=float(h["distance"]),
                date=h["entity"]["effective_text"],
                chunk_no=int(h["entity"].get("chunk_no", 0)),
                section=str(h["entity"].get("section", "")),
                version=str(h["entity"].get("version", "")),
            )
            for h in result
        ]

    def entries(self, expr: str, limit: int) -> list[TimelineEntry]:
        """Chunks matching ``expr``, newest first, at most ``limit``.

        Milvus returns query rows unordered and at most 16,384 at a time, so every matching
        row is read in pages and only the ``limit`` newest are kept.
        """
        fields = ["resource_id", "resource_type", "text", "effective_text", "effective"]
        try:
            pages = _reloading(
                self._client,
                self.collection,
                lambda: self._client.query_iterator(
                    self.collection, batch_size=QUERY_PAGE, filter=expr, output_fields=fields
                ),
            )
            try:
                rows = (row for page in iter(pages.next, []) for row in page)
                newest = heapq.nsmallest(limit, rows, key=_newest_first)
            finally:
                pages.close()
        except MilvusException as exc:
            raise VectorStoreError("Milvus query failed") from exc
        return [
            TimelineEntry(
                resource_id=r["resource_id"],
                resource_type=r["resource_type"],
                text=r["text"],
                date=r["effective_text"],
                effective=int(r["effective"]),
            )
            for r in newest
        ]

    def existing(self, ids: Sequence[str], *, strong: bool = False) -> set[str]:
        """Those of the chunk ``ids`` that are in the collection (searchable now); ``strong``:
        including writes a Milvus server may not show a bounded-staleness read yet."""
        return {str(r["id"]) for r in self._by_ids(ids, ("id",), strong=strong)}

    def _by_ids(self, ids: Sequence[str], fields: Sequence[str], *, strong: bool) -> list[dict[str, Any]]:
        """The rows of ``ids`` that exist, with ``fields`` (primary-key lookups, in pages)."""
        found: list[dict[str, Any]] = []
        level = {"consistency_level": "Strong"} if strong else {}
        for start in range(0, len(ids), PROBE_IDS):
            listed = ", ".join(quote(i) for i in ids[start : start + PROBE_IDS])

            def probe(expr: str = f"id in [{listed}]") -> list[dict[str, Any]]:
                return list(
                    self._client.query(self.collection, filter=expr, output_fields=list(fields), **level)
                )

            try:
                found.extend(_reloading(self._client, self.collection, probe))
            except MilvusException as exc:
                raise VectorStoreError("Milvus query failed") from exc
        return found


def _row(c: Chunk) -> dict[str, Any]:
    """A chunk's fields as the collection stores them (without its version and vector)."""
    return {
        "id": c.id,
        "patient": c.patient_id,
        "resource_id": c.resource_id,
        "resource_type": c.resource_type,
        "effective": c.effective,
        "effective_text": c.effective_text[:64],
        "chunk_no": c.chunk_no,
        "encounter": c.encounter[:128],
        "codes": c.codes[:CODES_MAX],
        "section": c.section[:128],
        "text": c.text[:TEXT_MAX],
    }


COMPARED = tuple(f for f in FIELDS if f not in ("version", "vector", "sparse"))
"""The fields `MilvusStore.unchanged` compares (those `_row` writes): all but the version and
the vectors (the dense one follows from the text, the sparse one is the collection's own BM25
of it)."""


KNOWLEDGE_FIELDS = ("id", "source", "title", "section", "citation", "chunk_no", "text", "vector", "sparse")


class KnowledgeStore(_Collection):
    """The knowledge-base collection: cited guideline and drug-information passages."""

    fields = KNOWLEDGE_FIELDS

    def _add_fields(self, schema: Any) -> None:
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("source", DataType.VARCHAR, max_length=256)
        schema.add_field("title", DataType.VARCHAR, max_length=256)
        schema.add_field("section", DataType.VARCHAR, max_length=256)
        schema.add_field("citation", DataType.VARCHAR, max_length=1024)
        schema.add_field("chunk_no", DataType.INT64)

    def replace_source(
        self, source: str, chunks: Sequence[KnowledgeChunk], vectors: npt.NDArray[np.float32]
    ) -> None:
        """Make ``chunks`` the whole content of document ``source`` (a shorter new version
        leaves nothing of the old one behind), then flush."""
        rows = [
            {
                "id": c.id,
                "source": c.source[:256],
                "title": c.title[:256],
                "section": c.section[:256],
                "citation": c.citation[:1024],
                "chunk_no": c.chunk_no,
                "text": c.text[:TEXT_MAX],
                "vector": vectors[i].tolist(),
            }
            for i, c in enumerate(chunks)
        ]
        try:
            if rows:
                self._client.upsert(self.collection, rows)
            self._client.delete(
                self.collection, filter=f"source == {quote(source)} and chunk_no >= {len(rows)}"
            )
            self._client.flush(self.collection)
        except MilvusException as exc:
            raise VectorStoreError("Milvus rejected a knowledge-base write") from exc

    def search(
        self, vector: npt.NDArray[np.float32], question: str, k: int, *, mode: SearchMode = DEFAULT_MODE
    ) -> list[KnowledgeHit]:
        """The k passages that best answer ``question``."""
        output = ["source", "title", "section", "citation", "text"]
        return [
            KnowledgeHit(
                source=h["entity"]["source"],
                title=h["entity"]["title"],
                section=h["entity"]["section"],
                citation=h["entity"]["citation"],
                text=h["entity"]["text"],
                score=float(h["distance"]),
            )
            for h in _ranked(self._client, self.collection, vector, question, "", k, mode, output)
        ]
