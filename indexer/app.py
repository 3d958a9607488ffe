"""FastStream wiring of the indexer: `ehr.fhir.v1` → Milvus.

Records arrive in batches (by count or wait time); each batch is chunked, embedded in
one ONNX call per embedding batch and written, and only once Milvus has acknowledged the
writes are the offsets committed. Segments are sealed (flushed) by rows and by age
(`indexer.flush`). If Milvus or the model fails the batch is sought back and retried after a
pause, so nothing is skipped; a record that is not a valid `FhirRecord` is dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter, Gauge

from indexer.chunking import BatchPlan, plan_batch
from indexer.flush import FlushPolicy
from indexer.query import TextEmbedder, VectorStore
from kernel.events import Topics
from kernel.kafka import (
    STAGE_CONSUMER,
    StageConsumer,
    batch_records,
    batch_subscriber,
    commit_after,
    publish_dead_letters,
)
from kernel.settings import IndexerSettings

log = logging.getLogger(__name__)

CHUNKS_UPSERTED = Counter("clinstream_index_chunks_upserted", "Chunks written to the vector store")
CHUNKS_DELETED = Counter(
    "clinstream_index_resources_removed", "Resources taken out of the index (entered-in-error, cancelled)"
)
LAST_INDEXED = Gauge("clinstream_index_last_batch_timestamp", "Unix time of the last committed batch")
FLUSHES = Counter("clinstream_index_flushes", "Milvus flushes (segment seals) by the flush policy")
RETRY_BACKOFF_S = 2.0


def register_indexer(
    broker: KafkaBroker,
    topics: Topics,
    settings: IndexerSettings,
    embedder: TextEmbedder,
    store: VectorStore,
    *,
    group_id: str = "indexer",
    flusher: Flusher | None = None,
    executor: Executor | None = None,
    consumer: StageConsumer = STAGE_CONSUMER,
) -> None:
    """Subscribe the indexer to the normalized FHIR topic on ``broker``. Batches are embedded
    and written in ``executor`` (`indexer.priority.background_executor` in a deployment; the
    event loop's default executor without one)."""

    @batch_subscriber(
        broker,
        topics.fhir,
        group_id=group_id,
        consumer=consumer,
        max_records=settings.batch_max_records,
        timeout_ms=settings.batch_timeout_ms,
    )
    async def index(msg: KafkaMessage) -> None:
        records = batch_records(msg)
        plan = plan_batch(records)

        async def write() -> None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, write_plan, embedder, store, plan, flusher)
            await publish_dead_letters(broker, topics, plan.dead_letters)

        if await commit_after(msg, write, stage="indexer", backoff_s=RETRY_BACKOFF_S):
            CHUNKS_UPSERTED.inc(len(plan.upserts))
            CHUNKS_DELETED.inc(plan.removed)
            LAST_INDEXED.set_to_current_time()


class Flusher:
    """Applies a `FlushPolicy` to a store; called from the batch thread and a periodic task."""

    def __init__(
        self, store: VectorStore, policy: FlushPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store, self._policy, self._clock = store, policy, clock
        self._lock = threading.Lock()

    def wrote(self, rows: int) -> None:
        """Rows were written (and acknowledged); flush if that makes one due."""
        with self._lock:
            self._policy.wrote(rows, self._clock())
        self.flush_if_due()

    def flush_if_due(self) -> bool:
        """Flush when the policy says so; True when it flushed."""
        with self._lock:
            if not self._policy.due(self._clock()):
                return False
            self._store.flush()
            self._policy.flushed()
        FLUSHES.inc()
        return True

    def flush_now(self) -> None:
        """Seal everything written (at shutdown)."""
        with self._lock:
            if self._policy.pending:
                self._store.flush()
                self._policy.flushed()


def write_plan(
    embedder: TextEmbedder, store: VectorStore, plan: BatchPlan, flusher: Flusher | None = None
) -> None:
    """Embed and write a batch plan (blocking; run in a thread). Returns once Milvus has
    acknowledged the writes; they are sealed by ``flusher``'s policy, or at once without one."""
    if plan.upserts:
        store.upsert(plan.upserts, embedder.embed([c.text for c in plan.upserts]))
    if plan.keep:
        store.retire(plan.keep)  # chunks numbered beyond each resource's new count
    if not (plan.upserts or plan.keep):
        return
    if flusher is None:
        store.flush()
    else:
        flusher.wrote(len(plan.upserts) + len(plan.keep))
