"""Replaying dead letters after a fix: choose them (pure), then re-publish them (adapter).

A dead letter that a stage wrote after reading a topic goes back to that topic with its
original key and envelope, so the stage processes it again as if it were new. Input
refused at the edge (MLLP, FHIR ingress) has no source topic: the sender was told and
resends, so it is listed as not replayable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.events import DeadLetter, Topics

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


async def read_dead_letters(bootstrap: str, topics: Topics) -> list[DeadLetter]:
    """Every dead letter currently on the topic (read to the end, no consumer group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(topics.deadletter)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for assign()
            partitions = consumer.partitions_for_topic(topics.deadletter) or set()
        assigned = [TopicPartition(topics.deadletter, p) for p in sorted(partitions)]
        if not assigned:
            return []
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends: dict[Any, int] = await consumer.end_offsets(assigned)
        letters: list[DeadLetter] = []
        while await _behind(consumer, ends):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                letters.extend(DeadLetter.model_validate_json(r.value) for r in records)
        return letters
    finally:
        await consumer.stop()


async def _behind(consumer: AIOKafkaConsumer, ends: dict[Any, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def republish(producer_kwargs: dict[str, Any], letters: Sequence[DeadLetter]) -> int:
    """Publish each dead letter's original bytes back to its source topic (acks=all)."""
    producer = AIOKafkaProducer(**producer_kwargs)
    await producer.start()
    try:
        for letter in letters:
            assert letter.source_topic is not None  # noqa: S101 - plan() keeps only these
            await producer.send_and_wait(
                letter.source_topic, letter.payload, key=letter.key, headers=headers_of(letter)
            )
            log.info("replayed dead letter %s to %s", letter.id, letter.source_topic)
    finally:
        await producer.stop()
    return len(letters)
