"""The audit log on Kafka (`audit.events.v1`): a chained writer and the readers behind
`GET /audit/events` and `clinstream audit`.

The writer keys each event by its patient and picks the partition itself (Kafka's murmur2, as
every other producer does), so that it can chain the events of each partition: one send at a
time per partition, ``acks=all``, the chain advanced only once the broker confirmed. A send that
fails raises `AuditUnavailableError`; the caller then answers 503 and discloses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from kernel.audit import genesis, record_hash, seal
from kernel.changelog_kafka import partitions_of
from kernel.errors import AuditUnavailableError

log = logging.getLogger(__name__)


class AuditLog(Protocol):
    """Where AuditEvents go: returns once the event is durably written, else raises."""

    async def write(self, event: dict[str, Any], patient: str | None) -> None:
        """Write one AuditEvent about ``patient`` (None: no patient)."""

    async def write_many(self, items: Sequence[tuple[dict[str, Any], str | None]]) -> None:
        """Write several AuditEvents (each with its patient) at once."""


class MemoryAuditLog:
    """An in-process audit log (unit tests and tools that read back what they wrote)."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, Any], str | None]] = []

    async def write(self, event: dict[str, Any], patient: str | None) -> None:
        """Keep the event."""
        self.events.append((event, patient))

    async def write_many(self, items: Sequence[tuple[dict[str, Any], str | None]]) -> None:
        """Keep the events."""
        self.events.extend(items)


def writer_id() -> str:
    """A name for this process's chains: host, pid and a random part (a restarted process
    starts new chains)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class KafkaAuditLog:
    """`AuditLog` over its own idempotent producer (``producer_kwargs``: `producer_config`)."""

    def __init__(self, producer_kwargs: dict[str, Any], topic: str, *, timeout_s: float = 10.0) -> None:
        self._kwargs = producer_kwargs
        self._topic = topic
        self._timeout = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._writer = writer_id()
        self._chains: dict[int, tuple[int, str]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def start(self) -> None:
        """Connect the producer."""
        producer = AIOKafkaProducer(**self._kwargs)
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise AuditUnavailableError("the audit log's producer could not connect") from exc
        self._producer = producer

    async def stop(self) -> None:
        """Flush and close."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def write(self, event: dict[str, Any], patient: str | None) -> None:
        """Seal ``event`` into its partition's chain and write it (acks=all)."""
        await self.write_many([(event, patient)])

    async def write_many(self, items: Sequence[tuple[dict[str, Any], str | None]]) -> None:
        """Seal each event into its partition's chain and write them all (acks=all); returns
        when the broker confirmed every one.

        Chain links are made and records queued under their partitions' locks (taken in one
        order: no deadlock), so records enter each partition in chain order (the producer is
        idempotent: it keeps that order); the broker's confirmation is awaited outside them, so
        concurrent callers share produce requests instead of queueing one round trip each."""
        if self._producer is None:
            raise AuditUnavailableError("the audit log is not started")
        producer = self._producer
        try:
            async with asyncio.timeout(self._timeout + len(items) / 100):
                partitions = sorted(await producer.partitions_for(self._topic))
                placed = [
                    (
                        event,
                        key,
                        int(self._partitioner(key, partitions, partitions)) if key else partitions[0],
                    )
                    for event, key in ((e, p.encode() if p else None) for e, p in items)
                ]
                async with contextlib.AsyncExitStack() as held:
                    for partition in sorted({p for _, _, p in placed}):
                        await held.enter_async_context(self._locks.setdefault(partition, asyncio.Lock()))
                    sent = []
                    for event, key, partition in placed:
                        seq, previous = self._chains.get(partition, (-1, genesis(self._writer)))
                        value = seal(event, writer=self._writer, seq=seq + 1, previous=previous)
                        sent.append(
                            await producer.send(
                                self._topic,
                                value,
                                key=key,
                                partition=partition,
                                headers=[("resource_type", b"AuditEvent")],
                            )
                        )
                        self._chains[partition] = (seq + 1, record_hash(value))
                await asyncio.gather(*sent)
        except (KafkaError, TimeoutError) as exc:
            self._restart_chains()
            raise AuditUnavailableError("the audit log did not confirm the write") from exc

    def _partition(self, key: bytes | None, partitions: list[int]) -> int:
        """Where Kafka's own partitioner puts ``key`` (unkeyed events: the first partition)."""
        return int(self._partitioner(key, partitions, partitions)) if key else partitions[0]

    def _restart_chains(self) -> None:
        """After a write the broker did not confirm (it may still have stored it): continue
        under a new writer name, so the old chains end where they end and verify intact."""
        self._writer = writer_id()
        self._chains = {}


async def read_partitions(
    bootstrap: str,
    topic: str,
    *,
    key: bytes | None = None,
    since: datetime | None = None,
    security: Mapping[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every record of ``topic`` up to its end now, as (partition, offset, key, value), in
    offset order per partition. ``key``: only the partition that key goes to, and only its
    records; ``since``: from the first offset at or after that time; ``security``:
    `kernel.settings.kafka_security`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **(security or {}))
    try:
        async with asyncio.timeout(timeout_s):
            partitions = await partitions_of(bootstrap, topic, security)
            await consumer.start()
            return await _read(consumer, topic, partitions, key, since)
    except (KafkaError, TimeoutError, RuntimeError) as exc:
        raise AuditUnavailableError("the audit log could not be read") from exc
    finally:
        await consumer.stop()


async def _read(
    consumer: AIOKafkaConsumer, topic: str, partitions: list[int], key: bytes | None, since: datetime | None
) -> list[tuple[int, int, bytes | None, bytes]]:
    if key is not None:
        partitions = [int(DefaultPartitioner()(key, partitions, partitions))]
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    if since is not None:
        ms = max(0, int(since.timestamp() * 1000))  # before 1970: from the start
        at = await consumer.offsets_for_times({tp: ms for tp in tps})
        starts = {tp: (found.offset if (found := at.get(tp)) is not None else ends[tp]) for tp in tps}
    pending = {tp for tp in tps if starts[tp] < ends[tp]}
    for tp in tps:
        if tp in pending:
            consumer.seek(tp, starts[tp])
        else:
            consumer.pause(tp)
    out: list[tuple[int, int, bytes | None, bytes]] = []
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
        for tp, records in batches.items():
            out += [
                (tp.partition, r.offset, r.key, r.value)
                for r in records
                if r.offset < ends[tp] and r.value is not None and (key is None or r.key == key)
            ]
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
                consumer.pause(tp)
    return out


def events_of(records: list[tuple[int, int, bytes | None, bytes]]) -> list[dict[str, Any]]:
    """The AuditEvents of records (an unreadable record is skipped: `verify` reports it)."""
    events = []
    for _, _, _, value in records:
        try:
            event = json.loads(value)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
