"""Topics read to their end and dead letters republished, with aiokafka (the adapter of `kernel.replay`).

Used by the CLI's `replay`, the dashboard and the exports: each reads a topic without a
consumer group, so reading moves no stage's offsets.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from kernel.events import DeadLetter, Topics
from kernel.replay import Replay, Written

log = logging.getLogger(__name__)


async def read_topic(
    bootstrap: str, topic: str, *, last: int | None = None, security: Mapping[str, Any] | None = None
) -> list[ConsumerRecord[Any, Any]]:
    """The records now on ``topic`` (the ``last`` of each partition, or all), without a group;
    ``security``: `kernel.settings.kafka_security`."""
    return [r async for batch in scan_topic(bootstrap, topic, last=last, security=security) for r in batch]


async def scan_topic(
    bootstrap: str, topic: str, *, last: int | None = None, security: Mapping[str, Any] | None = None
) -> AsyncIterator[list[ConsumerRecord[Any, Any]]]:
    """The records now on ``topic`` in batches as they are fetched (``read_topic`` without
    holding them all: a topic of the record's whole history), without a group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **(security or {}),
    )
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for assign()
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not assigned:
            return
        consumer.assign(assigned)
        ends: dict[Any, int] = await consumer.end_offsets(assigned)
        starts: dict[Any, int] = await consumer.beginning_offsets(assigned)
        for tp in assigned:
            consumer.seek(tp, starts[tp] if last is None else max(starts[tp], ends[tp] - last))
        while await _behind(consumer, ends):
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                yield [r for r in batch if r.offset < ends[tp]]
    finally:
        await consumer.stop()


async def read_dead_letters(
    bootstrap: str, topics: Topics, security: Mapping[str, Any] | None = None
) -> list[DeadLetter]:
    """Every dead letter currently on the topic (read to the end, no consumer group)."""
    records = await read_topic(bootstrap, topics.deadletter, security=security)
    return [DeadLetter.model_validate_json(r.value) for r in records]


async def _behind(consumer: AIOKafkaConsumer, ends: dict[Any, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def republish(producer_kwargs: dict[str, Any], replays: Sequence[Replay]) -> list[Written]:
    """Publish each replay (acks=all), in order; where each one was stored."""
    producer = AIOKafkaProducer(**producer_kwargs)
    await producer.start()
    written = []
    try:
        for r in replays:
            meta = await producer.send_and_wait(r.topic, r.payload, key=r.key, headers=r.headers)
            written.append(Written(r.letter_id, r.topic, meta.partition, meta.offset))
            log.info(
                "replayed dead letter %s to %s%s", r.letter_id, r.topic, " (corrected)" if r.edited else ""
            )
    finally:
        await producer.stop()
    return written
