from datetime import UTC, datetime

from indexer.chunking import chunk_id, plan_record, render_observation
from stream.events import Envelope, FhirRecord

ENVELOPE = Envelope(
    source_system="LIS^LAB",
    source_message_id="C1",
    content_hash="h",
    received_at=datetime(2025, 1, 1, tzinfo=UTC),
    trace_id="t",
)
POTASSIUM = {
    "resourceType": "Observation",
    "id": "k1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3", "display": "Potassium"}]},
    "effectiveDateTime": "2025-01-01T11:00:00+00:00",
    "valueQuantity": {"value": 6.2, "unit": "mmol/L"},
    "interpretation": [{"coding": [{"code": "HH"}]}],
    "referenceRange": [{"low": {"value": 3.5}, "high": {"value": 5.1}}],
}


def test_rendering_reads_like_a_lab_result():
    assert (
        render_observation(POTASSIUM) == "Potassium 6.2 mmol/L (critical high; ref 3.5-5.1) 2025-01-01 11:00"
    )


def test_text_values_and_preliminary_status_are_rendered():
    obs = {"code": {"text": "Culture"}, "valueString": "No growth", "status": "preliminary"}
    assert render_observation(obs) == "Culture No growth (preliminary)"


def test_plan_upserts_observations_with_deterministic_ids():
    record = FhirRecord(
        envelope=ENVELOPE, patient_id="p1", resources=[{"resourceType": "Patient", "id": "p1"}, POTASSIUM]
    )
    plan = plan_record(record)
    [chunk] = plan.upserts
    assert chunk.id == chunk_id("Observation/k1") == plan_record(record).upserts[0].id
    assert (chunk.patient_id, chunk.resource_id, chunk.resource_type) == (
        "p1",
        "Observation/k1",
        "Observation",
    )
    assert chunk.effective == int(datetime(2025, 1, 1, 11, tzinfo=UTC).timestamp())
    assert plan.deletes == []


def test_entered_in_error_deletes_the_chunk():
    record = FhirRecord(
        envelope=ENVELOPE, patient_id="p1", resources=[{**POTASSIUM, "status": "entered-in-error"}]
    )
    plan = plan_record(record)
    assert plan.upserts == []
    assert plan.deletes == [chunk_id("Observation/k1")]
