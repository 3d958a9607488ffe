"""Decision support's FastStream subscribers (normalized records, clinician feedback) on
FastStream's in-memory broker. The same handlers run on the real broker in tests/integration."""

from datetime import UTC, datetime, timedelta

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from inference.cds.app import register_cds
from inference.cds.rules import RuleSet
from inference.cds.state_store import SqliteStateStore
from kernel.events import Alert, DeadLetter, Envelope, FhirRecord, Topics
from kernel.priority import LivePressure
from tests.fakes import collected

TOPICS = Topics()
ENVELOPE = Envelope(
    source_system="LIS^LAB",
    source_message_id="L1",
    content_hash="h",
    received_at=datetime(2025, 1, 1, tzinfo=UTC),
    trace_id="t1",
    message_type="ORU^R01",
)
POTASSIUM = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
    "valueQuantity": {"value": 6.4, "unit": "mmol/L", "code": "mmol/L"},
}


async def test_cds_dead_letters_unreadable_records_and_alerts_on_good_ones():
    broker = KafkaBroker()
    store = SqliteStateStore(":memory:")
    register_cds(broker, TOPICS, RuleSet(), store, clock=lambda: ENVELOPE.received_at)
    alerts, dead = collected(broker, TOPICS.alerts), collected(broker, TOPICS.deadletter)
    obs = POTASSIUM
    good = FhirRecord(envelope=ENVELOPE, patient_id="p1", resources=[obs]).model_dump_json().encode()
    weird = (
        FhirRecord(
            envelope=ENVELOPE,
            patient_id="p1",
            resources=[{**obs, "id": None, "valueQuantity": {"value": "x", "code": "mmol/L"}}],
        )
        .model_dump_json()
        .encode()
    )
    async with TestKafkaBroker(broker) as br:
        await br.publish(b"{not json", topic=TOPICS.fhir)
        await br.publish(weird, topic=TOPICS.fhir)
        await br.publish(good, topic=TOPICS.fhir)
    assert [Alert.model_validate_json(a).patient_id for a in alerts] == ["p1"]
    letters = [DeadLetter.model_validate_json(b) for b in dead]
    assert [d.error_type for d in letters] == ["ValidationError", "RuleInputError"]
    assert store.load("p1") is not None


async def test_cds_writes_alerts_back_on_the_channels_switched_on():
    import json

    from inference.cds.writeback import WritebackConfig

    broker = KafkaBroker()
    store = SqliteStateStore(":memory:")
    register_cds(
        broker,
        TOPICS,
        RuleSet(),
        store,
        clock=lambda: ENVELOPE.received_at,
        writeback=WritebackConfig(fhir=True, hl7=True),
    )
    alerts = collected(broker, TOPICS.alerts)
    fhir, hl7 = collected(broker, TOPICS.outbound_fhir), collected(broker, TOPICS.outbound_hl7v2)
    obs = POTASSIUM
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"value": "100002"}]}
    good = FhirRecord(envelope=ENVELOPE, patient_id="p1", resources=[patient, obs]).model_dump_json().encode()
    async with TestKafkaBroker(broker) as br:
        await br.publish(good, topic=TOPICS.fhir)
    [alert] = [Alert.model_validate_json(a) for a in alerts]
    assert [json.loads(r)["resourceType"] for r in fhir] == ["DetectedIssue", "Provenance"]
    assert json.loads(fhir[0])["id"] == alert.id
    [oru] = hl7
    assert oru.startswith(b"MSH|")
    assert b"PID|1||100002^^^^MR" in oru


async def test_cds_applies_snooze_feedback_to_patient_state():
    from inference.cds.rules import process
    from kernel.events import ClinicianFeedback

    store = SqliteStateStore(":memory:")
    obs = POTASSIUM
    first = process(
        None,
        FhirRecord(envelope=ENVELOPE, patient_id="p1", resources=[obs]),
        RuleSet(),
        now=ENVELOPE.received_at,
    )
    store.save(first.state)
    [alert] = first.alerts
    broker = KafkaBroker()
    register_cds(broker, TOPICS, RuleSet(), store, clock=lambda: ENVELOPE.received_at)
    snooze = ClinicianFeedback(
        id="f1",
        patient_id="p1",
        target="alert",
        target_id=alert.id,
        rule_id=alert.rule_id,
        outcome="overridden",
        reason_code="snooze-4h",
        at=ENVELOPE.received_at,
        channel="cds-hooks",
        principal="ehr",
    )
    async with TestKafkaBroker(broker) as br:
        await br.publish(snooze.model_dump_json().encode(), topic=TOPICS.feedback)
        await br.publish(b"{}", topic=TOPICS.feedback)
    assert store.load("p1").snoozes == {alert.key: ENVELOPE.received_at + timedelta(hours=4)}


async def test_cds_decides_a_batch_in_offset_order_with_one_state_write():
    from tests.unit.inference.cds.fixtures import T0, hours, obs, record

    store = SqliteStateStore(":memory:")
    writes = []
    save_many = store.save_many

    def counted(states, written=None):
        writes.append(sorted(s.patient_id for s in states))
        save_many(states, written)

    store.save_many = counted
    broker = KafkaBroker()
    register_cds(broker, TOPICS, RuleSet(), store, clock=lambda: T0 + hours(25))
    alerts, dead = collected(broker, TOPICS.alerts), collected(broker, TOPICS.deadletter)
    baseline = record(obs("2160-0", 0.8, at=T0), message_id="M1")
    rise = record(obs("2160-0", 1.3, at=T0 + hours(24)), message_id="M2")  # +0.5 mg/dL in 24 h: KDIGO
    other = record(POTASSIUM | {"effectiveDateTime": (T0 + hours(24)).isoformat()}, patient="p2")
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(
            baseline.model_dump_json().encode(),
            b"{not json",
            rise.model_dump_json().encode(),
            other.model_dump_json().encode(),
            topic=TOPICS.fhir,
        )
    # the rise is judged against the baseline from the same batch: records apply in turn
    assert sorted((a.patient_id, a.rule_id) for a in map(Alert.model_validate_json, alerts)) == [
        ("p1", "aki-kdigo"),
        ("p2", "critical-lab"),
    ]
    assert [DeadLetter.model_validate_json(d).error_type for d in dead] == ["ValidationError"]
    assert writes == [["p1", "p2"]]
    assert len(store.load("p1").readings["creatinine"]) == 2


@pytest.mark.parametrize(("lane", "late"), [("live", True), ("backfill", False)])
async def test_cds_tells_the_edges_when_a_live_record_reached_it_late(lane, late):
    broker = KafkaBroker()
    pressure = LivePressure(limit_s=0.25)
    register_cds(broker, TOPICS, RuleSet(), SqliteStateStore(":memory:"), pressure=pressure)
    old = ENVELOPE.model_copy(update={"received_at": datetime.now(UTC) - timedelta(seconds=5), "lane": lane})
    record = FhirRecord(envelope=old, patient_id="p1", resources=[POTASSIUM])
    async with TestKafkaBroker(broker) as br:
        await br.publish(record.model_dump_json().encode(), topic=TOPICS.fhir)
    assert pressure.busy() is late
