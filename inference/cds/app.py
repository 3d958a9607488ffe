"""FastStream wiring of decision support: `ehr.fhir.v1` and clinician feedback → patient state →
rules → `cds.alerts.v1`.

One consumer group (`cds`) reads both topics, co-partitioned (both keyed by patient, the range
assignor gives partition p of each to the same instance), so the instance that owns a patient's
partition is the only one that changes the patient's state. Each patient's state lives in the
changelog `cds.state.v1` (`inference.cds.state_store`, `kernel.changelog_kafka`): on assignment the
instance first restores the partition's state from it (`kernel.changelog_kafka.RestoreOnAssign`).

For each batch: load the patients' states, apply each normalized record in offset order and run
the rules (`inference.cds.rules.process`, pure) and each override its snooze; then publish the
alerts keyed by patient (with, where the deployment switched it on, their write-back to the
outbound topics), the changed states to the changelog, and commit the batch's offsets, through
`kernel.kafka.BatchCommitter`: one Kafka transaction on Apache Kafka (exactly-once), outputs then
offsets elsewhere (at-least-once: a replay raises the same alert ids, consumers dedupe). One
commit, one state write and at most one thread hop per batch instead of per record is what keeps
this stage ahead of a 100 msg/s feed while it shares its process with the other stages
(`bench/alerts.py`). A record the rules cannot read is dead-lettered, never skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from prometheus_client import Counter

from inference.cds.cards import snoozed_by
from inference.cds.rules import Outcome, RuleSet, carries_notes, process
from inference.cds.state import PatientState
from inference.cds.state_store import SqliteStateStore
from inference.cds.terminology import Sighting, sightings_in
from inference.cds.terminology_store import TerminologyStore
from inference.cds.writeback import outbound
from kernel.errors import ModelRunError
from kernel.events import Alert, ClinicianFeedback, FhirRecord, Topics
from kernel.kafka import (
    STAGE_CONSUMER,
    BatchCommitter,
    Outgoing,
    StageConsumer,
    batch_records,
    changelog_records,
    confirmed,
    counted_dead_letters,
    dead_letter_for,
    dead_letter_record,
    fhir_records,
    retry_later,
)
from kernel.priority import LivePressure, in_lane
from kernel.settings import CdsSettings
from kernel.writeback import NO_WRITEBACK, ChartIdentifier, WritebackConfig

log = logging.getLogger(__name__)
_SETTINGS = CdsSettings()  # the defaults of the settings, written there once

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
    store: SqliteStateStore,
    *,
    group_id: str = "cds",
    writeback: WritebackConfig = NO_WRITEBACK,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    max_records: int = _SETTINGS.batch_max_records,
    batch_timeout_ms: int = _SETTINGS.batch_timeout_ms,
    consumer: StageConsumer = STAGE_CONSUMER,
    committer: BatchCommitter | None = None,
    listener: ConsumerRebalanceListener | None = None,
    terminology: TerminologyStore | None = None,
    pressure: LivePressure | None = None,
) -> BatchSubscriber:
    """Subscribe decision support to the normalized FHIR topic and clinician feedback.

    Records are taken in batches of at most ``max_records`` (whatever has arrived;
    ``batch_timeout_ms`` is how long an idle consumer waits between polls). ``committer`` finishes
    each batch (default: outputs confirmed, then offsets); ``listener`` restores the state of
    assigned partitions before their records are processed. ``terminology``: the confirmed local
    code mappings each sender's records are read with, and where the codes no rule knows are
    counted (`inference.cds.terminology_store`). ``pressure`` is told how late each live record
    reached it (history waits while they are late)."""
    done = committer or BatchCommitter(broker, group_id=group_id)
    subscriber = broker.subscriber(
        topics.fhir,
        topics.feedback,
        group_id=group_id,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=batch_timeout_ms,
        partition_assignment_strategy=(RangePartitionAssignor,),
        listener=listener,
        **consumer,
    )

    @subscriber
    async def decide(msg: KafkaMessage) -> None:
        records = batch_records(msg)
        parsed, letters = fhir_records((r for r in records if r.topic == topics.fhir), stage="cds")
        feedback: list[tuple[Any, ClinicianFeedback]] = []
        for record in records:
            if record.topic != topics.fhir:
                try:
                    feedback.append((record, ClinicianFeedback.model_validate_json(record.value or b"")))
                except Exception as exc:
                    letters.append(dead_letter_for(exc, record, stage="cds"))
        partition = {f.patient_id: r.partition for r, f in feedback}
        partition |= {p.patient_id: r.partition for r, p in parsed}
        patients = list(partition)
        try:
            states = await _load(store, patients)
        except Exception:
            await retry_later(msg, stage="cds", backoff_s=RETRY_BACKOFF_S, what="patient state not readable")
            return
        decided: list[tuple[FhirRecord, Outcome]] = []
        changed: dict[str, PatientState] = {}
        sightings: dict[int, list[Sighting]] = {}

        def decide_all() -> None:
            for record, one in parsed:  # in offset order: a patient's records change its state in turn
                mine = (
                    rules if terminology is None else terminology.rules_for(rules, one.envelope.source_system)
                )
                try:
                    outcome = process(states.get(one.patient_id), one, mine, now=clock())
                    unknown = sightings_in(one, mine.local_codes) if terminology is not None else []
                except ModelRunError:
                    raise  # not the record's fault: the whole batch is retried
                except Exception as exc:  # the content breaks the record contract (RuleInputError)
                    letters.append(dead_letter_for(exc, record, stage="cds"))
                    continue
                if unknown:
                    sightings.setdefault(record.partition, []).extend(unknown)
                states[one.patient_id] = changed[one.patient_id] = outcome.state
                decided.append((one, outcome))
            for _, answer in feedback:
                state = states.get(answer.patient_id)
                snoozed = snoozed_by(state, answer) if state is not None else None
                if snoozed is not None:
                    states[answer.patient_id] = changed[answer.patient_id] = snoozed

        lanes = {one.envelope.lane for _, one in parsed}
        try:
            if lanes == {"backfill"}:  # history: low priority, the loop serves live records
                await in_lane("backfill", decide_all, stage="cds")
            elif "backfill" in lanes or (
                rules.note_matcher is not None and any(carries_notes(one) for _, one in parsed)
            ):
                await asyncio.to_thread(decide_all)  # a patient's history, or the notes' embedding model
            else:
                decide_all()
        except ModelRunError:
            await retry_later(msg, stage="cds", backoff_s=RETRY_BACKOFF_S, what="note model failed")
            return
        saved = list(changed.values())
        entries = store.changes(saved, partition)
        counted = terminology.changes(sightings) if terminology is not None and sightings else []
        outgoing = [
            *(
                out
                for _, outcome in decided
                for alert in outcome.alerts
                for out in _outgoing(topics, alert, outcome.state.identifier, writeback)
            ),
            *(dead_letter_record(topics, letter) for letter in letters),
            *changelog_records(topics.unmapped_codes, counted),
            *changelog_records(topics.cds_state, entries),  # last: `confirmed` reads the tail
        ]
        offsets = await done.commit(msg, outgoing, stage="cds", backoff_s=RETRY_BACKOFF_S)
        if offsets is None:
            return
        await asyncio.to_thread(store.save_many, saved, confirmed(entries, offsets))
        if counted and terminology is not None:
            placed = confirmed(counted, offsets[: len(offsets) - len(entries)])
            await asyncio.to_thread(terminology.unmapped.apply, placed, own=True)
        counted_dead_letters(letters)
        served = datetime.now(UTC)
        for one, outcome in decided:
            _count(outcome, one.envelope.trace_id)
            if pressure is not None and one.envelope.lane == "live":
                pressure.note((served - one.envelope.received_at).total_seconds())
        for _, answer in feedback:
            FEEDBACK.labels(answer.rule_id or "-", answer.outcome, answer.reason_code or "-").inc()

    return subscriber


async def _load(store: SqliteStateStore, patients: list[str]) -> dict[str, PatientState]:
    """The states of ``patients``; a thread hop only when one is not in memory."""
    known = {p: s for p in patients if (s := store.cached(p)) is not None}
    if len(known) == len(patients):
        return known
    return await asyncio.to_thread(store.load_many, patients)


def _count(outcome: Outcome, trace_id: str) -> None:
    for alert in outcome.alerts:
        ALERTS.labels(alert.rule_id, alert.severity).inc()
        log.info("alert %s rule=%s severity=%s trace=%s", alert.id, alert.rule_id, alert.severity, trace_id)
    for held in outcome.held:
        HELD.labels(held.finding.rule_id, held.reason).inc()


def _outgoing(
    topics: Topics, alert: Alert, patient: ChartIdentifier | None, writeback: WritebackConfig
) -> list[Outgoing]:
    """``alert`` on the alerts topic, then its write-back on the outbound topics switched on."""
    key = alert.patient_id.encode()
    out = outbound(alert, patient, writeback)
    headers = {"trace_id": alert.trace_id, "alert_id": alert.id}
    return [
        Outgoing(
            topics.alerts,
            alert.model_dump_json().encode(),
            key,
            {"rule_id": alert.rule_id, "severity": alert.severity, "trace_id": alert.trace_id},
        ),
        *(Outgoing(topics.outbound_fhir, payload, key, headers) for payload in out.fhir),
        *(Outgoing(topics.outbound_hl7v2, payload, key, headers) for payload in out.hl7),
    ]
