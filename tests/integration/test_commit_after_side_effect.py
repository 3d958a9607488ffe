"""On the real broker: a failed side effect is retried from the same offset, and offsets are
committed only after the side effect succeeded."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from clinstream.runtime import ensure_topics
from clinstream.stack import stage_broker
from indexer.app import register_indexer
from indexer.milvus_store import MilvusStore, connect
from kernel.events import Envelope, FhirRecord
from kernel.settings import IndexerSettings, KafkaSettings, producer_config

ENVELOPE = Envelope(
    source_system="LIS^LAB",
    source_message_id="L1",
    content_hash="h",
    received_at="2025-01-01T00:00:00+00:00",
    trace_id="t1",
)


class FlakyStore:
    """A real Milvus Lite store whose first two upserts fail, like a Milvus outage."""

    def __init__(self, inner):
        self.inner, self.failures = inner, 2

    def upsert(self, chunks, vectors):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("milvus unavailable")
        self.inner.upsert(chunks, vectors)

    def retire(self, keep):
        self.inner.retire(keep)

    def unchanged(self, chunks):
        return self.inner.unchanged(chunks)

    def flush(self):
        self.inner.flush()

    def search(self, vector, expr, k, **kwargs):
        return self.inner.search(vector, expr, k, **kwargs)


async def test_indexer_retries_from_the_same_offset_then_commits(
    broker, topics, prefix, embedder, tmp_path, monkeypatch
):
    monkeypatch.setattr("indexer.app.RETRY_BACKOFF_S", 0.2)
    await ensure_topics(broker.bootstrap, topics.all(), partitions=1, replication_factor=1)
    client = connect(None, lite_path=tmp_path / "m" / "flaky.db")
    store = MilvusStore(client, "chunks", embedder.dimension)
    store.ensure_collection()
    flaky = FlakyStore(store)
    config = producer_config(KafkaSettings(), broker.bootstrap, tansu=broker.kind == "tansu")
    kafka = stage_broker("indexer", config)
    group = f"{prefix}indexer"
    register_indexer(
        kafka,
        topics,
        IndexerSettings(batch_max_records=10, batch_timeout_ms=50),
        embedder,
        flaky,
        group_id=group,
    )
    producer = AIOKafkaProducer(**config)
    await producer.start()
    obs = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"text": "Potassium"},
            "valueQuantity": {"value": 4 + i / 10, "unit": "mmol/L"},
        }
        for i in range(3)
    ]
    for o in obs:
        record = FhirRecord(envelope=ENVELOPE, patient_id="p1", resources=[o])
        await producer.send_and_wait(topics.fhir, record.model_dump_json().encode(), key=b"p1")
    await producer.stop()
    await kafka.start()
    try:
        async with asyncio.timeout(30):
            while store.count() < 3:
                await asyncio.sleep(0.2)
    finally:
        await kafka.stop()
    assert flaky.failures == 0
    assert store.count() == 3
    ids = ", ".join(f'"Observation/o{i}"' for i in range(3))
    assert store.count(f"resource_id in [{ids}]") == 3
    committed = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    await committed.start()
    try:
        offset = await committed.committed(TopicPartition(topics.fhir, 0))
    finally:
        await committed.stop()
    client.close()
    assert offset == 3
