"""The connectors' write path into Kafka: one send, confirmed by the broker or an error.

A thin adapter around aiokafka's producer (configured by `stream.settings.producer_config`:
``acks=all``). The MLLP server depends on the `RecordSink` protocol so unit tests can
pass an in-memory sink and integration tests the real one.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from connectors.errors import BrokerUnavailableError


class RecordSink(Protocol):
    """Somewhere to durably write a record."""

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Return only once the record is durably stored; raise BrokerUnavailableError otherwise."""


class CachedPartitioner:
    """Kafka's default partitioner (murmur2 of the key) with a cache.

    aiokafka computes murmur2 in pure Python on every send; a patient's key recurs with
    each of their messages, and the result for a key and partition count never changes.
    """

    def __init__(self, size: int = 65_536) -> None:
        self._default = DefaultPartitioner()
        self._cache: dict[tuple[bytes, int], int] = {}
        self._size = size

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            chosen: int = self._default(key, all_partitions, available)
            return chosen
        cache_key = (key, len(all_partitions))
        partition = self._cache.get(cache_key)
        if partition is None:
            if len(self._cache) >= self._size:
                self._cache.clear()
            partition = self._cache[cache_key] = self._default(key, all_partitions, available)
        return partition


class KafkaSink:
    """`RecordSink` over an aiokafka producer; returns after the broker confirmed (acks=all)."""

    def __init__(self, producer_kwargs: dict[str, Any], *, confirm_timeout_s: float) -> None:
        self._kwargs = producer_kwargs
        self._timeout = confirm_timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect the producer."""
        self._producer = AIOKafkaProducer(**self._kwargs, partitioner=CachedPartitioner())
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            self._producer = None
            raise BrokerUnavailableError("Kafka producer could not connect") from exc

    async def stop(self) -> None:
        """Flush and close the producer."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Send one record and wait for the broker's acknowledgement."""
        if self._producer is None:
            raise BrokerUnavailableError("Kafka producer is not started")
        try:
            async with asyncio.timeout(self._timeout):
                await self._producer.send_and_wait(topic, value, key=key, headers=headers)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerUnavailableError(f"broker did not confirm the write to {topic}") from exc
