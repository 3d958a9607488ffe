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
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter, Gauge

from indexer.chunking import BatchPlan, Chunk, plan_batch
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
CHUNKS_UNCHANGED = Counter(
    "clinstream_index_chunks_unchanged", "Chunks a batch carried that the store held as they are"
)
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
    and written in ``executor`` (`kernel.priority.background_executor` in a deployment; the
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

        written = 0

        async def write() -> None:
            nonlocal written
            loop = asyncio.get_running_loop()
            written = await loop.run_in_executor(executor, write_plan, embedder, store, plan, flusher)
            await publish_dead_letters(broker, topics, plan.dead_letters)

        if await commit_after(msg, write, stage="indexer", backoff_s=RETRY_BACKOFF_S):
            CHUNKS_UPSERTED.inc(written)
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


def changed_resources(upserts: Sequence[Chunk], unchanged: set[str]) -> list[Chunk]:
    """The chunks of every resource with at least one chunk not in ``unchanged``: a resource the
    store holds exactly as planned (every chunk, text and fields) is not written again, so its
    chunks keep citing the message that brought this version of it; a resource that changed is
    written whole and cites the new message throughout."""
    stale = {c.resource_id for c in upserts if c.id not in unchanged}
    return [c for c in upserts if c.resource_id in stale]


def write_plan(
    embedder: TextEmbedder, store: VectorStore, plan: BatchPlan, flusher: Flusher | None = None
) -> int:
    """Embed and write a batch plan (blocking; run in a thread). Returns once Milvus has
    acknowledged the writes, with the number of chunks written: the chunks of each resource
    the store does not already hold exactly as planned (`changed_resources`). Writes are sealed
    by ``flusher``'s policy, or at once without one."""
    changed = changed_resources(plan.upserts, store.unchanged(plan.upserts) if plan.upserts else set())
    CHUNKS_UNCHANGED.inc(len(plan.upserts) - len(changed))
    if changed:
        store.upsert(changed, embedder.embed([c.text for c in changed]))
    if plan.keep:
        store.retire(plan.keep)  # chunks numbered beyond each resource's new count
    if not (changed or plan.keep):
        return 0
    if flusher is None:
        store.flush()
    else:
        flusher.wrote(len(changed) + len(plan.keep))
    return len(changed)
