"""Replaying dead letters after a fix: choose them (pure), then re-publish them (adapter).

A dead letter that a stage wrote after reading a topic goes back to that topic with its
original key and envelope, so the stage processes it again as if it were new. Input
refused at the edge (MLLP, FHIR ingress) has no source topic: the sender was told and
resends, so it is listed as not replayable as it is. An integration analyst may instead
correct an HL7 v2 message by hand (the ops dashboard): the corrected bytes enter the
inbound topic with a new envelope, keyed by the patient they name, marked as a replay.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from stream.errors import ClinstreamError, Hl7Error
from stream.events import DeadLetter, Topics, content_hash, envelope_headers, patient_key
from stream.hl7v2 import parse_message, patient_identifier


class ReplayError(ClinstreamError, ValueError):
    """A replay that cannot be made (an edited message that does not parse, say)."""


@dataclass(frozen=True, slots=True)
class Replay:
    """A record to write back: a dead letter's bytes (or their correction) and where they go."""

    letter_id: str
    topic: str
    payload: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    edited: bool = False


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters to replay. Empty criteria match everything."""

    ids: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    stage: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether this dead letter is selected."""
        if self.ids and letter.id not in self.ids:
            return False
        if self.stage and letter.stage != self.stage:
            return False
        if self.since and letter.failed_at < self.since:
            return False
        return not (self.until and letter.failed_at > self.until)


def plan(letters: Iterable[DeadLetter], selection: Selection) -> tuple[list[DeadLetter], list[DeadLetter]]:
    """(replayable, not replayable) among the selected dead letters, each id once."""
    seen: set[str] = set()
    replay: list[DeadLetter] = []
    refused: list[DeadLetter] = []
    for letter in letters:
        if letter.id in seen or not selection.matches(letter):
            continue
        seen.add(letter.id)
        (replay if letter.source_topic else refused).append(letter)
    return replay, refused


def headers_of(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original envelope headers, plus a marker that this is a replay."""
    headers = letter.envelope.to_headers() if letter.envelope is not None else []
    return [*headers, ("replay_of", letter.id.encode())]


def as_replay(letter: DeadLetter) -> Replay:
    """The letter's original record, back to the topic it was read from."""
    if letter.source_topic is None:
        raise ReplayError("refused at the edge: the sender was told and resends (or correct it)")
    return Replay(letter.id, letter.source_topic, letter.payload, letter.key, headers_of(letter))


def corrected(letter: DeadLetter, payload: bytes, topics: Topics, *, editor: str, now: datetime) -> Replay:
    """A hand-corrected HL7 v2 message for the inbound topic, with a new envelope.

    The corrected message must parse and name its patient (the record key); the envelope
    gets the correction's hash, a new trace id and who corrected it (no PHI: a login name).
    """
    try:
        message = parse_message(payload.decode("utf-8"))
        key = patient_key(*patient_identifier(message))
    except (UnicodeDecodeError, Hl7Error, ValueError) as exc:
        raise ReplayError(f"the corrected message is not valid HL7 v2: {exc}") from None
    headers = envelope_headers(
        source_system=message.sending_system,
        source_message_id=message.control_id,
        content_hash=content_hash(payload),
        received_at=now,
        trace_id=secrets.token_hex(16),
        message_type=message.message_type,
    )
    extra = [("replay_of", letter.id.encode()), ("corrected_by", editor.encode())]
    return Replay(letter.id, topics.inbound_hl7v2, payload, key.encode(), [*headers, *extra], edited=True)


async def read_topic(
    bootstrap: str, topic: str, *, last: int | None = None
) -> list[ConsumerRecord[Any, Any]]:
    """The records now on ``topic`` (the ``last`` of each partition, or all), without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for assign()
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not assigned:
            return []
        consumer.assign(assigned)
        ends: dict[Any, int] = await consumer.end_offsets(assigned)
        starts: dict[Any, int] = await consumer.beginning_offsets(assigned)
        for tp in assigned:
            consumer.seek(tp, starts[tp] if last is None else max(starts[tp], ends[tp] - last))
        records: list[ConsumerRecord[Any, Any]] = []
        while await _behind(consumer, ends):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def read_dead_letters(bootstrap: str, topics: Topics) -> list[DeadLetter]:
    """Every dead letter currently on the topic (read to the end, no consumer group)."""
    return [DeadLetter.model_validate_json(r.value) for r in await read_topic(bootstrap, topics.deadletter)]


async def _behind(consumer: AIOKafkaConsumer, ends: dict[Any, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Written:
    """Where the broker stored a replay."""

    letter_id: str
    topic: str
    partition: int
    offset: int


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
