"""FastStream wiring of the indexer: `ehr.fhir.v1` → Milvus.

Records arrive in batches (by count or wait time); each batch is chunked, embedded in
one ONNX call per embedding batch, upserted and flushed, and only then are the offsets
committed. If Milvus or the model fails the batch is sought back and retried after a
pause, so nothing is skipped; a record that is not a valid `FhirRecord` is dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from indexer.chunking import Chunk, plan_record
from indexer.query import TextEmbedder, VectorStore
from stream.events import DeadLetter, FhirRecord, Topics
from stream.settings import IndexerSettings

log = logging.getLogger(__name__)

CHUNKS_UPSERTED = Counter("clinstream_index_chunks_upserted", "Chunks written to the vector store")
CHUNKS_DELETED = Counter("clinstream_index_chunks_deleted", "Chunks removed from the vector store")
LAST_INDEXED = Gauge("clinstream_index_last_batch_timestamp", "Unix time of the last committed batch")
RETRY_BACKOFF_S = 2.0


def register_indexer(
    broker: KafkaBroker,
    topics: Topics,
    settings: IndexerSettings,
    embedder: TextEmbedder,
    store: VectorStore,
    *,
    group_id: str = "indexer",
) -> None:
    """Subscribe the indexer to the normalized FHIR topic on ``broker``."""

    @broker.subscriber(
        topics.fhir,
        group_id=group_id,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    async def index(msg: KafkaMessage) -> None:
        upserts: dict[str, Chunk] = {}
        deletes: set[str] = set()
        letters: list[DeadLetter] = []
        for record in msg.raw_message:
            payload: bytes = record.value or b""
            try:
                parsed = FhirRecord.model_validate_json(payload)
            except ValidationError as exc:
                letters.append(
                    DeadLetter.from_error(
                        exc,
                        stage="indexer",
                        payload=payload,
                        source_topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                    )
                )
                continue
            plan = plan_record(parsed)
            for chunk in plan.upserts:  # later records win within a batch, as in the log
                upserts[chunk.id] = chunk
                deletes.discard(chunk.id)
            for cid in plan.deletes:
                upserts.pop(cid, None)
                deletes.add(cid)
        try:
            chunks = list(upserts.values())
            await asyncio.to_thread(_write, embedder, store, chunks, sorted(deletes))
            for letter in letters:
                await broker.publish(
                    letter.model_dump_json().encode(), topic=topics.deadletter, headers=letter.headers()
                )
        except Exception:
            log.exception("indexing batch of %d records failed; retrying", len(msg.raw_message))
            await msg.nack()
            await asyncio.sleep(RETRY_BACKOFF_S)
            return
        await msg.ack()
        CHUNKS_UPSERTED.inc(len(chunks))
        CHUNKS_DELETED.inc(len(deletes))
        LAST_INDEXED.set_to_current_time()


def _write(embedder: TextEmbedder, store: VectorStore, chunks: list[Chunk], deletes: list[str]) -> None:
    if chunks:
        store.upsert(chunks, embedder.embed([c.text for c in chunks]))
    if deletes:
        store.delete(deletes)
    if chunks or deletes:
        store.flush()
