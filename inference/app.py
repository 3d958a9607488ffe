"""FastStream wiring of decision support: `ehr.fhir.v1` → `cds.alerts.v1`.

Each normalized record is evaluated by the rules; alerts are published keyed by patient,
then the offset is committed (`stream.kafka.commit_after`). Alert ids are deterministic,
so a retried record re-publishes the same ids and consumers dedupe.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter

from inference.critical import evaluate
from stream.events import Alert, FhirRecord, Topics
from stream.kafka import commit_after, dead_letter_and_commit, dead_letter_for, single_record
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
        record = single_record(msg)
        try:
            parsed = FhirRecord.model_validate_json(record.value or b"")
            alerts = evaluate(parsed, threshold=threshold, now=datetime.now(UTC))
        except Exception as exc:  # a record the rules cannot read is dead-lettered, never skipped
            letter = dead_letter_for(exc, record, stage="cds")
            await dead_letter_and_commit(msg, broker, topics, letter, backoff_s=RETRY_BACKOFF_S)
            return
        if await commit_after(
            msg, lambda: _publish(broker, topics, alerts), stage="cds", backoff_s=RETRY_BACKOFF_S
        ):
            for alert in alerts:
                ALERTS.labels(alert.rule_id, alert.severity).inc()
                log.info(
                    "alert %s rule=%s severity=%s trace=%s",
                    alert.id,
                    alert.rule_id,
                    alert.severity,
                    alert.trace_id,
                )


async def _publish(broker: KafkaBroker, topics: Topics, alerts: list[Alert]) -> None:
    for alert in alerts:
        await broker.publish(
            alert.model_dump_json().encode(),
            topic=topics.alerts,
            key=alert.patient_id.encode(),
            headers={"rule_id": alert.rule_id, "severity": alert.severity, "trace_id": alert.trace_id},
        )
