"""The connectors' write path into Kafka: one send, confirmed by the broker or an error.

A thin adapter around aiokafka's producer (configured by `kernel.settings.producer_config`:
``acks=all``). The MLLP server depends on the `RecordSink` protocol so unit tests can
pass an in-memory sink and integration tests the real one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from connectors.errors import BrokerUnavailableError, RecordTooLargeError
from kernel.events import DeadLetter
from kernel.kafka import DEAD_LETTERS

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Somewhere to durably write a record."""

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Return only once the record is durably stored; raise BrokerUnavailableError otherwise."""


async def send_dead_letter(sink: RecordSink, topic: str, letter: DeadLetter) -> None:
    """Write a dead letter through a sink (unkeyed; its headers carry no PHI)."""
    await sink.send(
        topic,
        letter.model_dump_json().encode(),
        key=None,
        headers=[(k, v.encode()) for k, v in letter.headers().items()],
    )
    DEAD_LETTERS.labels(letter.stage).inc()


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
        except AioKafkaError as exc:
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
        except MessageSizeTooLargeError:
            raise _too_large(len(value)) from None
        except (AioKafkaError, TimeoutError) as exc:
            raise BrokerUnavailableError(f"broker did not confirm the write to {topic}") from exc


class LibrdkafkaSink:
    """`RecordSink` over confluent-kafka (librdkafka), the default for the ingress connectors.

    librdkafka produces from its own C threads, so an ACK costs the event loop a fraction of
    what aiokafka's pure-Python producer costs (measured: one produce round trip 0.39 ms vs
    0.71 ms; 4,267 vs 2,850 msg/s with 4 concurrent writers). Delivery reports arrive on a
    poll thread and resolve asyncio futures. Keys are partitioned with murmur2, like the
    Java client and aiokafka, so every producer agrees on a patient's partition.
    """

    def __init__(
        self,
        producer_kwargs: dict[str, Any],
        *,
        confirm_timeout_s: float,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self._config = {
            **(security or {}),  # `kernel.settings.librdkafka_security`
            "bootstrap.servers": producer_kwargs["bootstrap_servers"],
            "acks": "all" if producer_kwargs["acks"] == "all" else str(producer_kwargs["acks"]),
            "enable.idempotence": bool(producer_kwargs["enable_idempotence"]),
            "message.timeout.ms": int(producer_kwargs["request_timeout_ms"]),
            "request.timeout.ms": int(producer_kwargs["request_timeout_ms"]),
            "linger.ms": int(producer_kwargs.get("linger_ms", 0)),
            "message.max.bytes": int(producer_kwargs.get("max_request_size", 1_048_576)),
            "partitioner": "murmur2_random",
            "socket.nagle.disable": True,
            "log_level": 3,  # errors only; connection chatter is ours to report
        }
        self._timeout = confirm_timeout_s
        self._producer: Any = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    async def start(self) -> None:
        """Create the producer and check the broker answers."""
        from confluent_kafka import KafkaException, Producer

        producer = Producer(self._config, logger=log)
        try:
            await asyncio.to_thread(producer.list_topics, timeout=self._timeout)
        except KafkaException as exc:
            raise BrokerUnavailableError("Kafka producer could not connect") from exc
        self._producer = producer
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="librdkafka-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def stop(self) -> None:
        """Flush outstanding records, then stop polling."""
        if self._producer is None:
            return
        await asyncio.to_thread(self._producer.flush, self._timeout)
        self._stop.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5)
        self._producer = None

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Send one record and wait for the broker's acknowledgement."""
        from confluent_kafka import KafkaException

        if self._producer is None:
            raise BrokerUnavailableError("Kafka producer is not started")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def report(err: Any, _msg: Any) -> None:  # runs on the poll thread
            loop.call_soon_threadsafe(_settle, done, err)

        try:
            self._producer.produce(topic, value, key=key, headers=headers, on_delivery=report)
        except (BufferError, ValueError) as exc:
            raise BrokerUnavailableError(f"producer refused the write to {topic}") from exc
        except KafkaException as exc:
            if exc.args and _is_too_large(exc.args[0]):
                raise _too_large(len(value)) from None
            raise BrokerUnavailableError(f"producer refused the write to {topic}") from exc
        try:
            async with asyncio.timeout(self._timeout):
                await done
        except _DeliveryFailedError as exc:
            if exc.too_large:
                raise _too_large(len(value)) from None
            raise BrokerUnavailableError(f"broker did not confirm the write to {topic}") from exc
        except TimeoutError as exc:
            raise BrokerUnavailableError(f"broker did not confirm the write to {topic}") from exc


class _DeliveryFailedError(Exception):
    def __init__(self, text: str, *, too_large: bool) -> None:
        super().__init__(text)
        self.too_large = too_large


def _is_too_large(error: Any) -> bool:
    """Whether a librdkafka error (from produce() or a delivery report) says the record is too
    large: for this producer's ``message.max.bytes`` or for the broker's limit."""
    from confluent_kafka import KafkaError

    return isinstance(error, KafkaError) and error.code() in (
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
    )


def _too_large(size: int) -> RecordTooLargeError:
    return RecordTooLargeError(f"input of {size} bytes is larger than the broker accepts")


def _settle(future: asyncio.Future[None], err: Any) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(_DeliveryFailedError(str(err), too_large=_is_too_large(err)))


def make_sink(
    client: str,
    producer_kwargs: dict[str, Any],
    *,
    confirm_timeout_s: float,
    librdkafka_security: Mapping[str, Any] | None = None,
) -> KafkaSink | LibrdkafkaSink:
    """The ingress sink named by ``CLINSTREAM_KAFKA__INGEST_CLIENT``. The aiokafka producer's
    security is in ``producer_kwargs``; librdkafka takes it as its own settings."""
    if client == "aiokafka":
        return KafkaSink(producer_kwargs, confirm_timeout_s=confirm_timeout_s)
    return LibrdkafkaSink(producer_kwargs, confirm_timeout_s=confirm_timeout_s, security=librdkafka_security)
