"""FastStream wiring of decision support: `ehr.fhir.v1` → patient state → rules → `cds.alerts.v1`.

For each normalized record: load the patient's state, apply the record and run the rules
(`inference.rules.process`, pure), then publish the alerts keyed by patient (with, where the
deployment switched it on, their write-back to the outbound topics), save the state,
and commit the offset (`stream.kafka.commit_after`). Alerts go out before the state is saved:
a crash in between replays the record, which raises the same alert ids again (consumers dedupe)
instead of losing them. A record the rules cannot read is dead-lettered, never skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter

from inference.cards import snoozed_by
from inference.rules import Outcome, RuleSet, process
from inference.state import ChartIdentifier
from inference.state_store import StateStore
from inference.writeback import NO_WRITEBACK, WritebackConfig, outbound
from stream.events import Alert, ClinicianFeedback, FhirRecord, Topics
from stream.kafka import (
    STAGE_CONSUMER,
    commit_after,
    dead_letter_and_commit,
    dead_letter_for,
    retry_later,
    single_record,
)

log = logging.getLogger(__name__)

ALERTS = Counter("clinstream_alerts_raised", "Alerts published", ["rule_id", "severity"])
FEEDBACK = Counter(
    "clinstream_alert_feedback", "Clinician answers to alerts", ["rule_id", "outcome", "reason"]
)
HELD = Counter("clinstream_alerts_held", "Findings not raised, by reason", ["rule_id", "reason"])
RETRY_BACKOFF_S = 1.0


def register_cds(
    broker: KafkaBroker,
    topics: Topics,
    rules: RuleSet,
    store: StateStore,
    *,
    group_id: str = "cds",
    writeback: WritebackConfig = NO_WRITEBACK,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Subscribe decision support to the normalized FHIR topic and to clinician feedback."""
    lock = asyncio.Lock()  # both handlers read, change and save patient state

    @broker.subscriber(
        topics.fhir,
        group_id=group_id,
        **STAGE_CONSUMER,
    )
    async def decide(msg: KafkaMessage) -> None:
        record = single_record(msg)
        try:
            parsed = FhirRecord.model_validate_json(record.value or b"")
        except Exception as exc:  # a record the rules cannot read is dead-lettered, never skipped
            await _dead_letter(msg, broker, topics, exc, record)
            return
        async with lock:
            try:
                state = await asyncio.to_thread(store.load, parsed.patient_id)
            except Exception:
                await retry_later(
                    msg, stage="cds", backoff_s=RETRY_BACKOFF_S, what="patient state not readable"
                )
                return
            try:
                outcome = process(state, parsed, rules, now=clock())
            except Exception as exc:  # the content breaks the record contract (RuleInputError)
                await _dead_letter(msg, broker, topics, exc, record)
                return

            async def effects() -> None:
                await _publish(broker, topics, outcome.alerts, outcome.state.identifier, writeback)
                await asyncio.to_thread(store.save, outcome.state)

            committed = await commit_after(msg, effects, stage="cds", backoff_s=RETRY_BACKOFF_S)
        if committed:
            _count(outcome, parsed.envelope.trace_id)

    @broker.subscriber(
        topics.feedback,
        group_id=f"{group_id}-feedback",
        **STAGE_CONSUMER,
    )
    async def learn(msg: KafkaMessage) -> None:
        record = single_record(msg)
        try:
            feedback = ClinicianFeedback.model_validate_json(record.value or b"")
        except Exception as exc:
            await _dead_letter(msg, broker, topics, exc, record)
            return
        async with lock:

            async def effects() -> None:
                state = await asyncio.to_thread(store.load, feedback.patient_id)
                snoozed = snoozed_by(state, feedback) if state is not None else None
                if snoozed is not None:
                    await asyncio.to_thread(store.save, snoozed)

            committed = await commit_after(msg, effects, stage="cds", backoff_s=RETRY_BACKOFF_S)
        if committed:
            FEEDBACK.labels(feedback.rule_id or "-", feedback.outcome, feedback.reason_code or "-").inc()


async def _dead_letter(
    msg: KafkaMessage, broker: KafkaBroker, topics: Topics, exc: Exception, record: object
) -> None:
    letter = dead_letter_for(exc, record, stage="cds")
    await dead_letter_and_commit(msg, broker, topics, letter, backoff_s=RETRY_BACKOFF_S)


def _count(outcome: Outcome, trace_id: str) -> None:
    for alert in outcome.alerts:
        ALERTS.labels(alert.rule_id, alert.severity).inc()
        log.info("alert %s rule=%s severity=%s trace=%s", alert.id, alert.rule_id, alert.severity, trace_id)
    for held in outcome.held:
        HELD.labels(held.finding.rule_id, held.reason).inc()


async def _publish(
    broker: KafkaBroker,
    topics: Topics,
    alerts: list[Alert],
    patient: ChartIdentifier | None,
    writeback: WritebackConfig,
) -> None:
    for alert in alerts:
        key = alert.patient_id.encode()
        await broker.publish(
            alert.model_dump_json().encode(),
            topic=topics.alerts,
            key=key,
            headers={"rule_id": alert.rule_id, "severity": alert.severity, "trace_id": alert.trace_id},
        )
        out = outbound(alert, patient, writeback)
        headers = {"trace_id": alert.trace_id, "alert_id": alert.id}
        for payload in out.fhir:
            await broker.publish(payload, topic=topics.outbound_fhir, key=key, headers=headers)
        for payload in out.hl7:
            await broker.publish(payload, topic=topics.outbound_hl7v2, key=key, headers=headers)
