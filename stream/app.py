"""FastStream wiring of the normalizer: `ehr.inbound.hl7v2.v1` → `ehr.fhir.v1`.

Offsets are committed manually, after the side effect: the normalized record (or the
dead letter) is confirmed by the broker first. A failure to publish seeks back to the
message (nack) so it is processed again; a message that cannot be normalized goes to the
dead-letter topic once and is committed, so a poison message never blocks its partition.
"""

from __future__ import annotations

import asyncio
import logging
from zoneinfo import ZoneInfo

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter

from stream.events import DeadLetter, Envelope, FhirRecord, Topics
from stream.hl7v2 import decode_payload
from stream.normalize import normalize_hl7
from stream.settings import NormalizerSettings

log = logging.getLogger(__name__)

NORMALIZED = Counter("clinstream_normalized_messages", "Messages normalized to FHIR", ["message_type"])
DEAD_LETTERS = Counter("clinstream_dead_letters", "Records sent to the dead-letter topic", ["stage"])
RETRY_BACKOFF_S = 1.0


async def publish_dead_letter(broker: KafkaBroker, topics: Topics, letter: DeadLetter) -> None:
    """Write a dead letter and wait for the broker's confirmation."""
    await broker.publish(letter.model_dump_json().encode(), topic=topics.deadletter, headers=letter.headers())
    DEAD_LETTERS.labels(letter.stage).inc()
    log.warning(
        "dead letter stage=%s type=%s code=%s location=%s control_id=%s",
        letter.stage,
        letter.error_type,
        letter.error_code,
        letter.location or "-",
        letter.control_id,
    )


def register_normalizer(
    broker: KafkaBroker, topics: Topics, settings: NormalizerSettings, *, group_id: str = "normalizer"
) -> None:
    """Subscribe the normalizer to the inbound HL7 v2 topic on ``broker``."""
    tz = ZoneInfo(settings.default_timezone)

    @broker.subscriber(
        topics.inbound_hl7v2,
        group_id=group_id,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    async def normalize(msg: KafkaMessage) -> None:
        record = msg.raw_message
        if isinstance(record, tuple):  # only batch subscribers get tuples
            raise TypeError("expected a single record")
        payload: bytes = record.value or b""
        envelope: Envelope | None
        try:
            envelope = Envelope.from_headers(record.headers)
        except ValueError:
            envelope = None
        try:
            result = normalize_hl7(decode_payload(payload), tz=tz)
            if envelope is None:
                raise ValueError("record has no valid envelope headers")
            out = FhirRecord(envelope=envelope, patient_id=result.patient_id, resources=result.resources)
        except Exception as exc:  # every failure of the pure core becomes a dead letter
            letter = DeadLetter.from_error(
                exc,
                stage="normalizer",
                payload=payload,
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                envelope=envelope,
            )
            try:
                await publish_dead_letter(broker, topics, letter)
            except Exception:
                log.exception("dead letter not confirmed; will retry offset %d", record.offset)
                await msg.nack()
                await asyncio.sleep(RETRY_BACKOFF_S)
                return
            await msg.ack()
            return
        try:
            await broker.publish(
                out.model_dump_json().encode(),
                topic=topics.fhir,
                key=result.patient_id.encode(),
                headers={k: v.decode() for k, v in envelope.to_headers()},
            )
        except Exception:
            log.exception("normalized record not confirmed; will retry offset %d", record.offset)
            await msg.nack()
            await asyncio.sleep(RETRY_BACKOFF_S)
            return
        await msg.ack()
        NORMALIZED.labels(result.message_type).inc()
        log.debug("normalized control_id=%s resources=%d", result.control_id, len(result.resources))
