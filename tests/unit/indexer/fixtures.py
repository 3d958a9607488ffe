"""Builders of the indexer tests: a potassium result and records as the consumer reads them."""

from datetime import UTC, datetime

from kernel.events import Envelope, FhirRecord

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


class Rec:
    def __init__(self, value, offset):
        self.value, self.topic, self.partition, self.offset = value, "ehr.fhir.v1", 0, offset


def rec(resources, offset):
    return Rec(
        FhirRecord(envelope=ENVELOPE, patient_id="p1", resources=resources).model_dump_json().encode(), offset
    )
