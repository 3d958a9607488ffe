"""FastStream wiring of decision support: `ehr.fhir.v1` → `cds.alerts.v1`.

Each normalized record is evaluated by the rules; alerts are published keyed by patient,
then the offset is committed. Publishing failures seek back and retry; alert ids are
deterministic, so a retried record re-publishes the same ids and consumers dedupe.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from decimal import Decimal

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter
from pydantic import ValidationError

from inference.critical import evaluate
from stream.events import DeadLetter, FhirRecord, Topics
from stream.settings import CdsSettings

log = logging.getLogger(__name__)

ALERTS = Counter("clinstream_alerts_raised", "Alerts published", ["rule_id", "severity"])
RETRY_BACKOFF_S = 1.0


def register_cds(
    broker: KafkaBroker, topics: Topics, settings: CdsSettings, *, group_id: str = "cds"
) -> None:
    """Subscribe decision support to the normalized FHIR topic on ``broker``."""
    threshold = Decimal(str(settings.potassium_critical_high))

    @broker.subscriber(
        topics.fhir,
        group_id=group_id,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    async def decide(msg: KafkaMessage) -> None:
        record = msg.raw_message
        if isinstance(record, tuple):  # only batch subscribers get tuples
            raise TypeError("expected a single record")
        payload: bytes = record.value or b""
        try:
            parsed = FhirRecord.model_validate_json(payload)
            alerts = evaluate(parsed, threshold=threshold, now=datetime.now(UTC))
        except (ValidationError, ValueError, ArithmeticError) as exc:
            letter = DeadLetter.from_error(
                exc,
                stage="cds",
                payload=payload,
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            try:
                await broker.publish(
                    letter.model_dump_json().encode(), topic=topics.deadletter, headers=letter.headers()
                )
            except Exception:
                log.exception("dead letter not confirmed; retrying offset %d", record.offset)
                await msg.nack()
                await asyncio.sleep(RETRY_BACKOFF_S)
                return
            await msg.ack()
            return
        try:
            for alert in alerts:
                await broker.publish(
                    alert.model_dump_json().encode(),
                    topic=topics.alerts,
                    key=alert.patient_id.encode(),
                    headers={
                        "rule_id": alert.rule_id,
                        "severity": alert.severity,
                        "trace_id": alert.trace_id,
                    },
                )
        except Exception:
            log.exception("alert not confirmed; retrying offset %d", record.offset)
            await msg.nack()
            await asyncio.sleep(RETRY_BACKOFF_S)
            return
        await msg.ack()
        for alert in alerts:
            ALERTS.labels(alert.rule_id, alert.severity).inc()
            log.info(
                "alert %s rule=%s severity=%s trace=%s",
                alert.id,
                alert.rule_id,
                alert.severity,
                alert.trace_id,
            )
