"""Consumer semantics every stage shares: commit after the side effect, seek back on failure.

FastStream subscribers run with ``AckPolicy.MANUAL``; a handler computes its output with
pure code, then calls `commit_after` with the side effect (publishes, a Milvus write).
The offset is committed only when the side effect returned; if it raised, the consumer
seeks back to the message (nack) and pauses, so nothing is skipped and a broker or
Milvus outage does not become a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal, TypedDict

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy
from faststream._internal.types import CustomCallable
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from prometheus_client import Counter, Histogram

from kernel.changelog_store import Entry
from kernel.events import DeadLetter, Envelope, FhirRecord, Topics
from kernel.settings import KafkaSettings

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 50
"""How long a stage's fetch request waits for records (aiokafka's default is 500 ms).

Tansu, the embedded broker, holds a fetch for this whole time even when records arrive
sooner, so at the default every hop between two stages could wait up to half a second.
Apache Kafka answers as soon as records arrive; there the only cost is more empty fetches
while a topic is idle (20 a second per consumer).
"""


def body_not_decoded(message: Any) -> None:
    """A subscriber's decoder that leaves the body as bytes: every stage handler reads the raw
    records (`batch_records`) and parses them with its own model. FastStream's default decoder
    would first turn each record's JSON into Python objects nobody reads (a sixth of decision
    support's time on a backlog, `bench/cds_backlog.py`)."""
    return None


class StageConsumer(TypedDict):
    """The consumer options every stage subscriber shares."""

    ack_policy: AckPolicy
    decoder: CustomCallable
    auto_offset_reset: Literal["earliest"]
    fetch_max_wait_ms: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    isolation_level: Literal["read_committed"]


def stage_consumer(kafka: KafkaSettings) -> StageConsumer:
    """How every stage subscriber consumes: ``broker.subscriber(topic, group_id=..., **consumer)``."""
    return {
        "ack_policy": AckPolicy.MANUAL,  # `commit_after` commits, once the side effect is done
        "decoder": body_not_decoded,
        "auto_offset_reset": "earliest",  # a new consumer group starts at the beginning: nothing skipped
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(100, kafka.session_timeout_ms // 3),  # Kafka's advice: a third
        # Records of the stateful stages' aborted transactions are never read (nor their
        # uncommitted ones, until committed); on topics without transactions this changes nothing.
        "isolation_level": "read_committed",
    }


STAGE_CONSUMER: Final[StageConsumer] = stage_consumer(KafkaSettings())
"""The consumer options of the default settings."""


def batch_subscriber(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str,
    consumer: StageConsumer,
    max_records: int,
    timeout_ms: int,
    listener: ConsumerRebalanceListener | None = None,
) -> BatchSubscriber:
    """The subscriber of a stage that takes ``topic`` in batches: whatever has arrived, at most
    ``max_records``, waiting at most ``timeout_ms`` for the first."""
    return broker.subscriber(
        topic,
        group_id=group_id,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=timeout_ms,
        listener=listener,
        **consumer,
    )


DEAD_LETTERS = Counter("clinstream_dead_letters", "Records sent to the dead-letter topic", ["stage"])
RETRIES = Counter("clinstream_consumer_retries", "Side effects that failed and will be retried", ["stage"])
STAGE_RECORDS = Counter(
    "clinstream_stage_records",
    "Records a stage finished (side effect confirmed, offset committed)",
    ["stage"],
)
STAGE_LATENCY = Histogram(
    "clinstream_stage_latency_seconds",
    "Age of an event when a stage finished it: received at the edge -> this stage's side effect confirmed",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
)


@dataclass(frozen=True)
class Outgoing:
    """A record a stage will publish."""

    topic: str
    payload: bytes
    key: bytes | None
    headers: dict[str, str]
    partition: int | None = None
    """The partition to write to; None: the key's (the default partitioner)."""


Written = tuple[int, int] | None
"""Where the broker wrote a record: (partition, offset); None when it did not say (FastStream's
in-memory test broker)."""


async def publish_in_order(broker: KafkaBroker, messages: Iterable[Outgoing]) -> list[Written]:
    """Send ``messages`` in order without waiting for each acknowledgement, then wait for all;
    where each was written.

    The producer keeps each partition's records in send order (aiokafka has one batch in
    flight per partition), so a patient's records stay in order; the caller commits only
    after this returns, so an acknowledgement that never comes means a replay, not a loss.
    """
    pending: list[asyncio.Future[Any] | None] = []
    for m in messages:
        sent = await broker.publish(
            m.payload, topic=m.topic, key=m.key, partition=m.partition, headers=m.headers, no_confirm=True
        )
        pending.append(sent)  # None: the in-memory test broker delivered it at once
    done = await asyncio.gather(*(f for f in pending if f is not None))
    metadata = iter(done)
    return [_written(next(metadata)) if f is not None else None for f in pending]


def _written(metadata: Any) -> Written:
    return int(metadata.partition), int(metadata.offset)


def input_offsets(msg: KafkaMessage) -> dict[TopicPartition, int]:
    """The offsets to commit once a batch is done: per partition, one past its last record."""
    offsets: dict[TopicPartition, int] = {}
    for record in batch_records(msg):
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


TXN_RETRY_BACKOFF_MS = 5
"""Retry backoff of a stateful stage's transactional producer. A transaction's requests can meet
the previous one still finishing (CONCURRENT_TRANSACTIONS, retried after this): with aiokafka's
100 ms default a transaction on the embedded broker took p95 130 ms back to back and 107 ms paced
30 ms apart, with 5 ms 40 and 15 ms (medians 26-32 and 5-8 ms either way; `bench/broker.py`)."""


class BatchCommitter:
    """How a stateful stage finishes a batch: its outputs and state changes confirmed, and its
    input offsets committed.

    With ``transactional_id`` (a broker with transactions: Apache Kafka), outputs, state changes
    and offsets are one transaction: all or none are visible to read_committed consumers, so a
    crash at any point neither loses nor repeats a batch (exactly-once). Without it (Tansu, the
    in-memory test broker), outputs are confirmed first and the offsets committed after:
    at-least-once, duplicates absorbed by deterministic ids.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        group_id: str,
        producer: dict[str, Any] | None = None,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
    ) -> None:
        self._broker = broker
        self._group_id = group_id
        self._config = (
            {
                **producer,
                "transactional_id": transactional_id,
                "transaction_timeout_ms": transaction_timeout_ms,
            }
            if producer is not None and transactional_id is not None
            else None
        )
        self._producer: AIOKafkaProducer | None = None

    @property
    def transactional(self) -> bool:
        """Whether batches are committed as transactions."""
        return self._config is not None

    async def start(self) -> None:
        """Start the transactional producer (InitProducerId fences a predecessor with the same id)."""
        if self._config is not None and self._producer is None:
            producer = AIOKafkaProducer(**self._config)
            await producer.start()
            self._producer = producer

    async def stop(self) -> None:
        """Stop the producer (an open transaction is aborted by the broker)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def commit(
        self, msg: KafkaMessage, messages: Sequence[Outgoing], *, stage: str, backoff_s: float
    ) -> list[Written] | None:
        """Send ``messages`` and commit ``msg``'s offsets; where the messages were written, or None
        when it failed (the batch is then sought back and will be processed again)."""
        try:
            if self._config is None:
                offsets = await publish_in_order(self._broker, messages)
            else:
                offsets = await self._transaction(msg, messages)
        except Exception:
            await retry_later(msg, stage=stage, backoff_s=backoff_s, what="outputs not confirmed")
            return None
        if self._config is None:
            await msg.ack()
        observe_done(stage, batch_records(msg), time.time())
        return offsets

    async def _transaction(self, msg: KafkaMessage, messages: Sequence[Outgoing]) -> list[Written]:
        await self.start()
        producer = self._producer
        assert producer is not None  # noqa: S101 - started above
        try:
            await producer.begin_transaction()
            futures = [
                await producer.send(
                    m.topic,
                    m.payload,
                    key=m.key,
                    partition=m.partition,
                    headers=[(k, v.encode()) for k, v in m.headers.items()],
                )
                for m in messages
            ]
            await producer.send_offsets_to_transaction(input_offsets(msg), self._group_id)
            await producer.commit_transaction()
        except BaseException:
            # Aborted, or fenced by a newer instance with our id: a fresh producer either way
            # (InitProducerId again), and the batch is retried from the committed offsets.
            self._producer = None
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return [_written(f.result()) for f in futures]


def batch_records(msg: KafkaMessage) -> tuple[Any, ...]:
    """The aiokafka ConsumerRecords behind a batch message, in the order they were fetched (a
    partition's records in offset order). FastStream's test broker hands a list, Kafka a tuple."""
    raw = msg.raw_message
    return tuple(raw) if isinstance(raw, (tuple, list)) else (raw,)


def single_record(msg: KafkaMessage) -> Any:
    """The aiokafka ConsumerRecord behind a non-batch message."""
    record = msg.raw_message
    if isinstance(record, tuple):  # only batch subscribers get tuples
        raise TypeError("expected a single record")
    return record


async def commit_after(
    msg: KafkaMessage, side_effect: Callable[[], Awaitable[None]], *, stage: str, backoff_s: float
) -> bool:
    """Run the side effect, then commit; on failure seek back and pause. True when committed."""
    try:
        await side_effect()
    except Exception:
        await retry_later(msg, stage=stage, backoff_s=backoff_s, what="side effect not confirmed")
        return False
    await msg.ack()
    observe_done(stage, batch_records(msg), time.time())
    return True


def received_at(record: Any) -> float | None:
    """Unix time the edge received ``record``'s event (its ``received_at`` header), or None for
    a record without one and for a replay (its age is the dead letter's, not the pipeline's)."""
    found = None
    for name, value in getattr(record, "headers", None) or ():
        if name == "replay_of":
            return None
        if name == "received_at":
            found = value
    if not isinstance(found, bytes):
        return None
    try:
        return datetime.fromisoformat(found.decode()).timestamp()
    except (UnicodeDecodeError, ValueError):
        return None


def observe_done(stage: str, records: Iterable[Any], now: float) -> None:
    """Count records a stage finished and observe their age (`STAGE_RECORDS`, `STAGE_LATENCY`)."""
    latency = STAGE_LATENCY.labels(stage)
    done = 0
    for record in records:
        done += 1
        at = received_at(record)
        if at is not None:
            latency.observe(max(0.0, now - at))
    STAGE_RECORDS.labels(stage).inc(done)


async def retry_later(msg: KafkaMessage, *, stage: str, backoff_s: float, what: str) -> None:
    """Seek back to ``msg`` and pause: an outage (broker, store), not a bad message. Call in ``except``."""
    RETRIES.labels(stage).inc()
    log.exception("%s: %s; the message will be processed again", stage, what)
    await msg.nack()
    await asyncio.sleep(backoff_s)


async def publish_dead_letters(broker: KafkaBroker, topics: Topics, letters: list[DeadLetter]) -> None:
    """Write dead letters, each confirmed by the broker. Logs identifiers, never content."""
    for letter in letters:
        await broker.publish(
            letter.model_dump_json().encode(), topic=topics.deadletter, headers=letter.headers()
        )
        counted_dead_letters([letter])


def dead_letter_record(topics: Topics, letter: DeadLetter) -> Outgoing:
    """``letter`` as a record of the dead-letter topic (count it once written: `counted_dead_letters`)."""
    return Outgoing(topics.deadletter, letter.model_dump_json().encode(), None, letter.headers())


def counted_dead_letters(letters: Iterable[DeadLetter]) -> None:
    """Count and log dead letters the broker confirmed. Logs identifiers, never content."""
    for letter in letters:
        DEAD_LETTERS.labels(letter.stage).inc()
        log.warning(
            "dead letter stage=%s type=%s code=%s location=%s control_id=%s offset=%s",
            letter.stage,
            letter.error_type,
            letter.error_code,
            letter.location or "-",
            letter.control_id,
            letter.offset,
        )


def changelog_records(topic: str, entries: Iterable[Entry]) -> list[Outgoing]:
    """Changelog ``entries`` as records of ``topic``, each in the partition it names."""
    return [Outgoing(topic, e.value or b"", e.key.encode(), {}, e.partition) for e in entries]


def confirmed(entries: Sequence[Entry], written: Sequence[Written]) -> list[Entry]:
    """Changelog ``entries`` sent last in a batch, with where the broker wrote them (the tail of
    ``written``, `BatchCommitter.commit`'s answer); a place not reported stays unknown."""
    tail = written[len(written) - len(entries) :] if entries else []
    return [
        replace(e, partition=w[0], offset=w[1]) if w is not None else e
        for e, w in zip(entries, tail, strict=True)
    ]


def envelope_of(record: Any) -> Envelope | None:
    """The envelope in a record's headers, or None when they are missing or invalid."""
    try:
        return Envelope.from_headers(record.headers)
    except ValueError:
        return None


def fhir_records(
    records: Iterable[Any], *, stage: str
) -> tuple[list[tuple[Any, FhirRecord]], list[DeadLetter]]:
    """Each consumed record of `ehr.fhir.v1` with its parsed FhirRecord, in order; a record that does
    not parse becomes a dead letter (never skipped)."""
    parsed: list[tuple[Any, FhirRecord]] = []
    letters: list[DeadLetter] = []
    for record in records:
        try:
            parsed.append((record, FhirRecord.model_validate_json(record.value or b"")))
        except Exception as exc:
            letters.append(dead_letter_for(exc, record, stage=stage))
    return parsed, letters


Parsed = list[tuple[Any, FhirRecord]]
"""Consumed records of `ehr.fhir.v1` with their FhirRecord, in offset order."""
FhirBatchHandler = Callable[[KafkaMessage, Parsed, list[DeadLetter]], Awaitable[None]]
"""A stage's handler of one batch of normalized records: the message, the parsed, the dead letters."""


def fhir_batches(
    broker: KafkaBroker,
    topics: Topics,
    *,
    stage: str,
    group_id: str,
    consumer: StageConsumer,
    max_records: int,
    timeout_ms: int,
    listener: ConsumerRebalanceListener | None = None,
) -> Callable[[FhirBatchHandler], BatchSubscriber]:
    """Subscribe a stage's handler to `ehr.fhir.v1` in batches; it gets the batch's message (to
    commit), the records that parse and dead letters for those that do not (`fhir_records`).
    ``listener``: told of partition assignments (a stateful stage restores their state)."""

    def register(handle: FhirBatchHandler) -> BatchSubscriber:
        subscriber = batch_subscriber(
            broker,
            topics.fhir,
            group_id=group_id,
            consumer=consumer,
            max_records=max_records,
            timeout_ms=timeout_ms,
            listener=listener,
        )

        @subscriber
        async def consume(msg: KafkaMessage) -> None:
            parsed, letters = fhir_records(batch_records(msg), stage=stage)
            await handle(msg, parsed, letters)

        return subscriber

    return register


def dead_letter_for(
    error: Exception, record: Any, *, stage: str, envelope: Envelope | None = None
) -> DeadLetter:
    """A dead letter for a consumed record, keeping its bytes, key and position for replay."""
    return DeadLetter.from_error(
        error,
        stage=stage,
        payload=record.value or b"",
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        envelope=envelope,
        key=record.key,
    )


async def dead_letter_and_commit(
    msg: KafkaMessage, broker: KafkaBroker, topics: Topics, letter: DeadLetter, *, backoff_s: float
) -> bool:
    """Publish the dead letter, then commit the record it replaces (retry on failure)."""
    return await commit_after(
        msg, lambda: publish_dead_letters(broker, topics, [letter]), stage=letter.stage, backoff_s=backoff_s
    )


class PayloadRedaction(logging.Filter):
    """aiokafka's producer logs every record's key and value at DEBUG ("Sending (key=%s
    value=%s) to %s"): patient data in a log whenever someone turns DEBUG on for everything.
    The record keeps its place and the partition, with the key and value replaced by sizes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            isinstance(record.args, tuple)
            and len(record.args) == 3
            and str(record.msg).startswith("Sending (")
        ):
            key, value, partition = record.args
            record.msg = "Sending a record (key %s bytes, value %s bytes) to %s"
            record.args = (_size(key), _size(value), partition)
        return True


def _size(value: object) -> int:
    return len(value) if isinstance(value, bytes | bytearray | str) else 0


def guard_payload_logs() -> None:
    """Install `PayloadRedaction` on the loggers that would write record contents (once)."""
    logger = logging.getLogger("aiokafka.producer.producer")
    if not any(isinstance(f, PayloadRedaction) for f in logger.filters):
        logger.addFilter(PayloadRedaction())
