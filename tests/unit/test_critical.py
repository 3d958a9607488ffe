from datetime import UTC, datetime
from decimal import Decimal

import pytest

from inference.critical import RULE_ID, evaluate
from stream.events import Envelope, FhirRecord

NOW = datetime(2025, 3, 6, 9, 0, tzinfo=UTC)
ENVELOPE = Envelope(
    source_system="LIS^LAB", source_message_id="C1", content_hash="h", received_at=NOW, trace_id="t1"
)


def _record(value, unit="mmol/L", status="final", code="2823-3", comparator=None):
    quantity = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    if comparator:
        quantity["comparator"] = comparator
    obs = {
        "resourceType": "Observation",
        "id": "obs1",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-03-06T08:30:00+00:00",
        "valueQuantity": quantity,
    }
    return FhirRecord(envelope=ENVELOPE, patient_id="p1", resources=[obs])


def _alerts(record):
    return evaluate(record, threshold=Decimal("6.0"), now=NOW)


@pytest.mark.parametrize(("value", "alerts"), [(5.9, 0), (5.99, 0), (6.0, 1), (6.4, 1), (9.1, 1)])
def test_threshold_boundary(value, alerts):
    assert len(_alerts(_record(value))) == alerts


def test_meq_per_litre_reads_as_mmol_per_litre():
    assert len(_alerts(_record(6.2, unit="mEq/L"))) == 1


@pytest.mark.parametrize("unit", ["mg/dL", "", "mmol"])
def test_unknown_unit_does_not_guess(unit):
    assert _alerts(_record(62, unit=unit)) == []


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered"])
def test_non_results_do_not_alert(status):
    assert _alerts(_record(6.5, status=status)) == []


def test_less_than_comparator_does_not_alert():
    assert _alerts(_record(7.0, comparator="<")) == []


def test_other_codes_do_not_alert():
    assert _alerts(_record(6.5, code="2951-2")) == []


def test_alert_content_is_explained_and_deterministic():
    [alert] = _alerts(_record(6.4))
    assert alert.rule_id == RULE_ID
    assert alert.severity == "critical"
    assert alert.evidence == ["Observation/obs1"]
    assert "6.4 mmol/L" in alert.summary
    assert "JAMA" in alert.citation
    assert alert.trace_id == "t1"
    assert _alerts(_record(6.4))[0].id == alert.id
    assert _alerts(_record(6.5))[0].id != alert.id
