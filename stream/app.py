"""FastStream wiring of the normalizer: `ehr.inbound.hl7v2.v1` → `ehr.fhir.v1`.

The normalized record (or the dead letter) is confirmed by the broker before the offset
is committed (`kernel.kafka.commit_after`). A message that cannot be normalized goes to
the dead-letter topic once and is committed, so a poison message never blocks its
partition.
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter

from kernel.events import DeadLetter, Envelope, FhirInbound, FhirRecord, Topics
from kernel.hl7v2.parser import decode_payload
from kernel.kafka import (
    STAGE_CONSUMER,
    Outgoing,
    StageConsumer,
    batch_records,
    batch_subscriber,
    commit_after,
    dead_letter_and_commit,
    dead_letter_for,
    envelope_of,
    publish_dead_letters,
    publish_in_order,
    single_record,
)
from kernel.priority import in_lane
from kernel.settings import NormalizerSettings
from stream.fhir_input import normalize_fhir
from stream.normalize import Normalized, normalize_hl7

log = logging.getLogger(__name__)

NORMALIZED = Counter("clinstream_normalized_messages", "Messages normalized to FHIR", ["message_type"])
UNMAPPED = Counter(
    "clinstream_unmapped",
    "Source segments (Z-segments included) and fields that no mapping read",
    ["message_type", "item"],
)
QUALITY_ISSUES = Counter(
    "clinstream_data_quality_issues",
    "Data-quality issues of messages that converted anyway, by issue code and sending system",
    ["code", "sender", "severity"],
)
RETRY_BACKOFF_S = 1.0


def register_normalizer(
    broker: KafkaBroker,
    topics: Topics,
    settings: NormalizerSettings,
    *,
    group_id: str = "normalizer",
    consumer: StageConsumer = STAGE_CONSUMER,
) -> None:
    """Subscribe the normalizer to the inbound HL7 v2 topic on ``broker``."""
    tz = ZoneInfo(settings.default_timezone)

    @batch_subscriber(
        broker,
        topics.inbound_hl7v2,
        group_id=group_id,
        consumer=consumer,
        max_records=settings.batch_max_records,
        timeout_ms=settings.batch_timeout_ms,
    )
    async def normalize(msg: KafkaMessage) -> None:
        outgoing: list[Outgoing] = []
        letters: list[DeadLetter] = []
        results: list[Normalized] = []
        records = batch_records(msg)
        envelopes = [envelope_of(record) for record in records]

        def normalize_all() -> None:
            for record, envelope in zip(records, envelopes, strict=True):
                try:
                    result = normalize_hl7(decode_payload(record.value or b""), tz=tz)
                    if envelope is None:
                        raise ValueError("record has no valid envelope headers")
                    outgoing.extend(_outgoing(topics, envelope, result))
                except Exception as exc:  # every failure of the pure core becomes a dead letter
                    letters.append(dead_letter_for(exc, record, stage="normalizer", envelope=envelope))
                    continue
                results.append(result)

        history = all(e is not None and e.lane == "backfill" for e in envelopes)
        await in_lane(
            "backfill" if history else "live", normalize_all, stage="normalizer"
        )  # a batch of history: low priority

        async def publish() -> None:
            await publish_in_order(broker, outgoing)
            await publish_dead_letters(broker, topics, letters)

        if await commit_after(msg, publish, stage="normalizer", backoff_s=RETRY_BACKOFF_S):
            for result in results:
                NORMALIZED.labels(result.message_type).inc()
                for item, count in result.unmapped.items():
                    UNMAPPED.labels(result.message_type, item).inc(count)
                for issue in result.issues:
                    QUALITY_ISSUES.labels(issue.code, result.sender, issue.severity).inc()
                log.debug(
                    "normalized control_id=%s resources=%d issues=%d",
                    result.control_id,
                    len(result.resources),
                    len(result.issues),
                )


def _outgoing(topics: Topics, envelope: Envelope, result: Normalized) -> list[Outgoing]:
    """The normalized record under its patient's key, and any record for another patient (the
    retired patient of a merge) under that one's."""
    headers = {k: v.decode() for k, v in envelope.to_headers()}
    records = [
        FhirRecord(
            envelope=envelope,
            patient_id=result.patient_id,
            resources=result.resources,
            unmapped=result.unmapped,
            issues=list(result.issues),
        )
    ]
    records += [
        FhirRecord(envelope=envelope, patient_id=other, resources=resources)
        for other, resources in result.also
    ]
    return [
        Outgoing(topics.fhir, r.model_dump_json().encode(), r.patient_id.encode(), headers) for r in records
    ]


def register_fhir_normalizer(
    broker: KafkaBroker,
    topics: Topics,
    settings: NormalizerSettings | None = None,
    *,
    group_id: str = "normalizer-fhir",
    consumer: StageConsumer = STAGE_CONSUMER,
) -> None:
    """Subscribe the FHIR-input normalizer to `ehr.inbound.fhir.v1`."""
    authorities = dict(settings.patient_authorities) if settings is not None else {}

    @broker.subscriber(
        topics.inbound_fhir,
        group_id=group_id,
        **consumer,
    )
    async def normalize_fhir_input(msg: KafkaMessage) -> None:
        record = single_record(msg)
        envelope = envelope_of(record)
        try:
            if envelope is None:
                raise ValueError("record has no valid envelope headers")
            lane = envelope.lane

            def normalized() -> list[FhirRecord]:
                inbound = FhirInbound.model_validate_json(record.value or b"")
                groups = normalize_fhir(inbound, authorities=authorities)
                return [
                    FhirRecord(envelope=envelope, patient_id=g.patient_id, resources=g.resources)
                    for g in groups
                ]

            outputs = await in_lane(
                lane, normalized, stage="normalizer-fhir"
            )  # a backfilled history: low priority, off the loop
        except Exception as exc:  # every failure of the pure core becomes a dead letter
            letter = dead_letter_for(exc, record, stage="normalizer", envelope=envelope)
            await dead_letter_and_commit(msg, broker, topics, letter, backoff_s=RETRY_BACKOFF_S)
            return

        async def publish() -> None:
            await publish_in_order(
                broker,
                (
                    Outgoing(
                        topics.fhir,
                        out.model_dump_json().encode(),
                        out.patient_id.encode() if out.patient_id else record.key,
                        {k: v.decode() for k, v in out.envelope.to_headers()},
                    )
                    for out in outputs
                ),
            )

        if await commit_after(msg, publish, stage="normalizer", backoff_s=RETRY_BACKOFF_S):
            NORMALIZED.labels("FHIR").inc(len(outputs))
