"""FastStream wiring of outbound delivery: `ehr.outbound.*` → the EHR, outcomes → `ehr.writeback.v1`.

Other stages never call the EHR themselves: they publish what should go back (an HL7
message, a FHIR resource) and this consumer delivers it. Each delivery's outcome is
recorded on the write-back topic; a message that was finally rejected or could not be
delivered within the attempts is also dead-lettered (kept for replay), and only then is
the offset committed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from connectors.errors import DeliveryError
from connectors.fhir_client import FhirWriter
from connectors.mllp_client import OutboundMllp
from kernel.events import DeadLetter, Topics, WritebackOutcome
from kernel.kafka import (
    STAGE_CONSUMER,
    StageConsumer,
    commit_after,
    dead_letter_and_commit,
    dead_letter_for,
    publish_dead_letters,
    single_record,
)

log = logging.getLogger(__name__)
RETRY_BACKOFF_S = 1.0
STAGE = "connectors.outbound"


async def _record(
    broker: KafkaBroker, topics: Topics, outcome: WritebackOutcome, letter: DeadLetter | None
) -> None:
    await broker.publish(
        outcome.model_dump_json().encode(),
        topic=topics.writeback,
        headers={"channel": outcome.channel, "outcome": outcome.outcome},
    )
    if letter is not None:
        await publish_dead_letters(broker, topics, [letter])


Deliver = Callable[[bytes], Awaitable[tuple[WritebackOutcome, str]]]
"""Delivers one record's payload: its outcome, and what a dead letter would say of a failure."""


def _register_delivery(
    broker: KafkaBroker, topics: Topics, topic: str, deliver: Deliver, group_id: str, consumer: StageConsumer
) -> None:
    """Consume ``topic``: deliver each record, record the outcome (and dead-letter what was not
    delivered), then commit. A record that cannot even be read is dead-lettered, never retried."""

    @broker.subscriber(topic, group_id=group_id, **consumer)
    async def deliver_record(msg: KafkaMessage) -> None:
        record = single_record(msg)
        try:
            outcome, failure = await deliver(record.value or b"")
        except Exception as exc:  # unreadable outbound record: never retried forever
            unreadable = dead_letter_for(exc, record, stage=STAGE)
            await dead_letter_and_commit(msg, broker, topics, unreadable, backoff_s=RETRY_BACKOFF_S)
            return
        letter: DeadLetter | None = None
        if outcome.outcome != "delivered":
            letter = dead_letter_for(DeliveryError(failure), record, stage=STAGE)
        await commit_after(
            msg, lambda: _record(broker, topics, outcome, letter), stage=STAGE, backoff_s=RETRY_BACKOFF_S
        )


def register_outbound_mllp(
    broker: KafkaBroker,
    topics: Topics,
    client: OutboundMllp,
    *,
    group_id: str = "outbound-mllp",
    consumer: StageConsumer = STAGE_CONSUMER,
) -> None:
    """Deliver `ehr.outbound.hl7v2.v1` records (raw HL7) to the EHR's MLLP endpoint, in order."""

    async def deliver(payload: bytes) -> tuple[WritebackOutcome, str]:
        result = await client.deliver(payload)
        outcome = WritebackOutcome(
            channel="mllp",
            target=result.control_id,
            outcome=result.outcome,
            status=result.code,
            attempts=result.attempts,
            at=datetime.now(UTC),
        )
        return outcome, f"MLLP delivery {result.outcome} with {result.code} after {result.attempts} attempts"

    _register_delivery(broker, topics, topics.outbound_hl7v2, deliver, group_id, consumer)


def register_outbound_fhir(
    broker: KafkaBroker,
    topics: Topics,
    writer: FhirWriter,
    *,
    group_id: str = "outbound-fhir",
    consumer: StageConsumer = STAGE_CONSUMER,
) -> None:
    """Write `ehr.outbound.fhir.v1` records (one FHIR resource each) back to the EHR with PUT."""

    async def deliver(payload: bytes) -> tuple[WritebackOutcome, str]:
        result = await writer.put(json.loads(payload))  # not a resource with type and id: dead letter
        outcome = WritebackOutcome(
            channel="fhir",
            target=result.reference,
            outcome=result.outcome,
            status=result.status,
            attempts=result.attempts,
            detail=",".join(result.issues),
            at=datetime.now(UTC),
        )
        failure = f"FHIR write-back {result.outcome} with HTTP {result.status}"
        return outcome, f"{failure} after {result.attempts} attempts"

    _register_delivery(broker, topics, topics.outbound_fhir, deliver, group_id, consumer)
