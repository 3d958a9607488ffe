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

from indexer.chunking import BatchPlan, plan_batch
from indexer.query import TextEmbedder, VectorStore
from stream.events import Topics
from stream.kafka import commit_after, publish_dead_letters
from stream.settings import IndexerSettings

log = logging.getLogger(__name__)

CHUNKS_UPSERTED = Counter("clinstream_index_chunks_upserted", "Chunks written to the vector store")
CHUNKS_DELETED = Counter(
    "clinstream_index_resources_removed", "Resources taken out of the index (entered-in-error, cancelled)"
)
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
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        plan = plan_batch(records)

        async def write() -> None:
            await asyncio.to_thread(write_plan, embedder, store, plan)
            await publish_dead_letters(broker, topics, plan.dead_letters)

        if await commit_after(msg, write, stage="indexer", backoff_s=RETRY_BACKOFF_S):
            CHUNKS_UPSERTED.inc(len(plan.upserts))
            CHUNKS_DELETED.inc(plan.removed)
            LAST_INDEXED.set_to_current_time()


def write_plan(embedder: TextEmbedder, store: VectorStore, plan: BatchPlan) -> None:
    """Embed and write a batch plan, then flush (blocking; run in a thread)."""
    if plan.upserts:
        store.upsert(plan.upserts, embedder.embed([c.text for c in plan.upserts]))
    if plan.keep:
        store.retire(plan.keep)  # chunks numbered beyond each resource's new count
    if plan.upserts or plan.keep:
        store.flush()
