import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from clinstream.runtime import EmbeddedBroker, ensure_topics
from kernel.settings import KafkaSettings, producer_config


async def test_topics_are_created_with_partitions(broker, topics):
    await ensure_topics(broker.bootstrap, topics.all(), partitions=6, replication_factor=1)
    await ensure_topics(broker.bootstrap, topics.all(), partitions=6, replication_factor=1)  # idempotent
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topics.fhir])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 6


async def test_acks_all_producer_works_and_idempotence_is_rejected(broker, topics):
    """DESIGN.md: Tansu answers InitProducerId with an error, so idempotence is off for it."""
    await ensure_topics(broker.bootstrap, [topics.fhir], partitions=6, replication_factor=1)
    config = producer_config(KafkaSettings(), broker.bootstrap, tansu=broker.kind == "tansu")
    assert config["acks"] == "all"
    producer = AIOKafkaProducer(**config)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topics.fhir, b"x", key=b"p1")
        assert meta.offset >= 0
    finally:
        await producer.stop()
    idempotent = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, enable_idempotence=True, acks="all", request_timeout_ms=3000
    )

    async def start_and_send():
        await idempotent.start()
        await asyncio.wait_for(idempotent.send_and_wait(topics.fhir, b"y"), 10)

    try:
        with pytest.raises(KafkaError):
            await start_and_send()
    finally:
        await idempotent.stop()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read().lower()
    except OSError:
        return False


async def test_stop_leaves_no_process():
    embedded = EmbeddedBroker()
    async with embedded:
        pid = embedded.pid
        assert pid is not None
        assert _alive(pid)
    assert not _alive(pid)
