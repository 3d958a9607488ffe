"""The normalizer's FastStream subscribers (HL7 v2 and FHIR input) on FastStream's in-memory
broker: outputs, dead letters, no skipped poison. The same handlers run on the real broker in
tests/integration."""

from datetime import UTC, datetime

from faststream.kafka import KafkaBroker, TestKafkaBroker
from prometheus_client import REGISTRY

from kernel.events import DeadLetter, Envelope, FhirInbound, FhirRecord, Topics
from kernel.settings import NormalizerSettings
from stream.app import register_fhir_normalizer, register_normalizer
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
ORU = (
    b"MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|202503060830||ORU^R01^ORU_R01|L1|P|2.5.1\r"
    b"PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
    b"OBX|1|NM|2823-3^Potassium^LN||6.4|mmol/L|3.5-5.1|HH|||F\r"
)


async def test_normalizer_publishes_fhir_and_dead_letters_bad_input():
    broker = KafkaBroker()
    register_normalizer(broker, TOPICS, NormalizerSettings())
    fhir, dead = collected(broker, TOPICS.fhir), collected(broker, TOPICS.deadletter)
    headers = {k: v.decode() for k, v in ENVELOPE.to_headers()}
    before = _issues_counted("malformed-value")
    async with TestKafkaBroker(broker) as br:
        await br.publish(ORU.replace(b"|6.4|", b"|six|"), topic=TOPICS.inbound_hl7v2, headers=headers)
        await br.publish(ORU.replace(b"100002^^^MERCY^MR", b""), topic=TOPICS.inbound_hl7v2, headers=headers)
        await br.publish(ORU, topic=TOPICS.inbound_hl7v2)  # no envelope headers
    [record] = [FhirRecord.model_validate_json(b) for b in fhir]  # the bad value converts, kept as sent
    assert [r["resourceType"] for r in record.resources] == ["Patient", "Observation"]
    assert record.resources[1]["valueString"] == "six"
    assert [(i.code, i.location) for i in record.issues] == [("malformed-value", "OBX[1]-5")]
    assert record.envelope == ENVELOPE
    assert _issues_counted("malformed-value") == before + 1
    letters = [DeadLetter.model_validate_json(b) for b in dead]
    assert [(d.error_type, d.location) for d in letters] == [("MappingError", "PID-3"), ("ValueError", "")]
    assert letters[1].reason.startswith("internal error (ValueError)")


def _issues_counted(code: str) -> float:
    labels = {"code": code, "sender": "LIS^MERCY_LAB", "severity": "warning"}
    value = REGISTRY.get_sample_value("clinstream_data_quality_issues_total", labels)
    return value or 0.0


async def test_normalizer_publishes_a_batch_in_order_with_its_dead_letters():
    broker = KafkaBroker()
    register_normalizer(broker, TOPICS, NormalizerSettings())
    fhir, dead = collected(broker, TOPICS.fhir), collected(broker, TOPICS.deadletter)
    headers = {k: v.decode() for k, v in ENVELOPE.to_headers()}
    second = ORU.replace(b"100002^^^MERCY^MR||ROE^RICHARD", b"100003^^^MERCY^MR||DOE^JANE")
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(ORU, b"MSH|not hl7", second, topic=TOPICS.inbound_hl7v2, headers=headers)
    records = [FhirRecord.model_validate_json(b) for b in fhir]
    patients = [r for rec in records for r in rec.resources if r["resourceType"] == "Patient"]
    names = [p["name"][0]["family"] for p in patients]
    assert names == ["ROE", "DOE"]  # in the order received
    assert len({r.patient_id for r in records}) == 2
    assert len(dead) == 1


async def test_fhir_input_is_normalized_per_patient_and_bad_input_dead_lettered():
    broker = KafkaBroker()
    register_fhir_normalizer(broker, TOPICS, NormalizerSettings())
    fhir, dead = collected(broker, TOPICS.fhir), collected(broker, TOPICS.deadletter)
    headers = {k: v.decode() for k, v in ENVELOPE.to_headers()}
    patient = {
        "resourceType": "Patient",
        "id": "pat-1",
        "identifier": [{"system": "urn:mrn:mercy", "value": "100002"}],
    }
    observation = {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": "Patient/pat-1"},
        "valueQuantity": {"value": 6.4, "unit": "mmol/L"},
    }
    inbound = FhirInbound(interaction="transaction", resources=[patient, observation], full_urls=[None, None])
    async with TestKafkaBroker(broker) as br:
        await br.publish(b"{not json", topic=TOPICS.inbound_fhir, headers=headers)
        await br.publish(inbound.model_dump_json().encode(), topic=TOPICS.inbound_fhir, headers=headers)
        await br.publish(inbound.model_dump_json().encode(), topic=TOPICS.inbound_fhir)  # no envelope
    [record] = [FhirRecord.model_validate_json(b) for b in fhir]
    assert sorted(r["resourceType"] for r in record.resources) == ["Observation", "Patient"]
    assert record.envelope == ENVELOPE
    subjects = {r["subject"]["reference"] for r in record.resources if "subject" in r}
    assert subjects == {f"Patient/{record.patient_id}"}
    letters = [DeadLetter.model_validate_json(b) for b in dead]
    assert [d.error_type for d in letters] == ["ValidationError", "ValueError"]
    assert {d.stage for d in letters} == {"normalizer"}


async def test_a_backfill_record_keeps_its_lane_through_both_normalizers():
    """History stays marked on `ehr.fhir.v1`, so decision support serves live records first."""
    broker = KafkaBroker()
    register_normalizer(broker, TOPICS, NormalizerSettings())
    register_fhir_normalizer(broker, TOPICS, NormalizerSettings())
    fhir = collected(broker, TOPICS.fhir)
    history = ENVELOPE.model_copy(update={"lane": "backfill"})
    headers = {k: v.decode() for k, v in history.to_headers()}
    patient = {
        "resourceType": "Patient",
        "id": "pat-2",
        "identifier": [{"system": "urn:mrn:x", "value": "9"}],
    }
    inbound = FhirInbound(interaction="transaction", resources=[patient], full_urls=[None])
    async with TestKafkaBroker(broker) as br:
        await br.publish(ORU, topic=TOPICS.inbound_hl7v2, headers=headers)
        await br.publish(inbound.model_dump_json().encode(), topic=TOPICS.inbound_fhir, headers=headers)
        await br.publish(ORU.replace(b"|L1|", b"|L2|"), topic=TOPICS.inbound_hl7v2, headers=ENVELOPE_HEADERS)
    lanes = [FhirRecord.model_validate_json(b).envelope.lane for b in fhir]
    assert sorted(lanes) == ["backfill", "backfill", "live"]


ENVELOPE_HEADERS = {k: v.decode() for k, v in ENVELOPE.to_headers()}
