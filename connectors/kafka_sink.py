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

from connectors.errors import BrokerUnavailableError


class RecordSink(Protocol):
    """Somewhere to durably write a record."""

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Return only once the record is durably stored; raise BrokerUnavailableError otherwise."""


class KafkaSink:
    """`RecordSink` over an aiokafka producer; returns after the broker confirmed (acks=all)."""

    def __init__(self, producer_kwargs: dict[str, Any], *, confirm_timeout_s: float) -> None:
        self._kwargs = producer_kwargs
        self._timeout = confirm_timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect the producer."""
        self._producer = AIOKafkaProducer(**self._kwargs)
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
