"""Patient state: readings in canonical units, idempotent application, bounded history."""

from decimal import Decimal

import pytest

from inference.cds.state import MAX_READINGS, PatientState, apply
from kernel.analytes import acvpu_letter, readings_of
from kernel.errors import RuleInputError
from tests.unit.inference.cds.fixtures import T0, condition, hours, obs, record, state_of


def test_blood_pressure_panel_components_are_read():
    panel = {
        "resourceType": "Observation",
        "id": "bp1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "effectiveDateTime": T0.isoformat(),
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 88, "unit": "mmHg", "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {"value": 50, "unit": "mmHg", "code": "mm[Hg]"},
            },
        ],
    }
    readings = {r.analyte: r for r in readings_of(panel)}
    assert readings["systolic_bp"].value == 88
    assert readings["diastolic_bp"].ref == "Observation/bp1"


@pytest.mark.parametrize(
    ("code", "value", "unit", "analyte", "expected"),
    [
        ("8310-5", 98.6, "[degF]", "temperature", Decimal(37)),
        ("2160-0", 88.4, "umol/L", "creatinine", Decimal("1.0000")),
        ("2345-7", 10, "mmol/L", "glucose", Decimal("180.156")),
        ("718-7", 95, "g/L", "hemoglobin", Decimal("9.5")),
        ("8867-4", 80, "{beats}/min", "heart_rate", Decimal(80)),
        ("59408-5", 95, "%", "spo2", Decimal(95)),
    ],
)
def test_values_arrive_in_canonical_units(code, value, unit, analyte, expected):
    [reading] = readings_of(obs(code, value, unit))
    assert reading.analyte == analyte
    assert reading.value.quantize(Decimal("0.0001")) == expected.quantize(Decimal("0.0001"))
    assert reading.as_sent == f"{value} {unit}"


def test_local_codes_map_to_analytes():
    local = {
        "resourceType": "Observation",
        "id": "l1",
        "status": "final",
        "code": {"coding": [{"system": "http://hosp.example/obs", "code": "RESP"}]},
        "effectiveDateTime": T0.isoformat(),
        "valueQuantity": {"value": 28, "unit": "/min"},
    }
    assert readings_of(local) == []
    [reading] = readings_of(local, {"http://hosp.example/obs|RESP": "respiratory_rate"})
    assert reading.analyte == "respiratory_rate"


@pytest.mark.parametrize(
    ("concept", "letter"),
    [
        ("Alert", "A"),
        ("New confusion", "C"),
        ("Responds to voice", "V"),
        ("pain", "P"),
        ("U", "U"),
        ("?", None),
    ],
)
def test_acvpu(concept, letter):
    assert acvpu_letter(concept) == letter


def test_time_falls_back_to_issued_then_to_receipt_and_dates_are_midnight_utc():
    no_time = obs("2823-3", 4.0, "mmol/L")
    del no_time["effectiveDateTime"]
    [reading] = readings_of(no_time, received_at=T0)
    assert reading.at == T0
    dated = obs("2823-3", 4.0, "mmol/L")
    dated["effectiveDateTime"] = "2019-03-04"
    assert readings_of(dated)[0].at.isoformat() == "2019-03-04T00:00:00+00:00"


@pytest.mark.parametrize(
    "broken",
    [
        {"id": None},
        {"valueQuantity": {"value": "six", "unit": "mmol/L"}},
        {"valueQuantity": {"value": "NaN", "unit": "mmol/L"}},
        {"effectiveDateTime": "yesterday"},
    ],
)
def test_contract_violations_raise_rule_input_error(broken):
    with pytest.raises(RuleInputError):
        readings_of({**obs("2823-3", 4.0, "mmol/L"), **broken})


def test_apply_is_idempotent_and_updates_replace():
    first = obs("2823-3", 6.4, "mmol/L", oid="k1")
    once = state_of(first)
    twice = apply(once, record(first))
    assert once == twice
    corrected = {**first, "status": "corrected", "valueQuantity": {"value": 4.4, "unit": "mmol/L"}}
    assert [r.value for r in apply(once, record(corrected)).readings["potassium"]] == [Decimal("4.4")]
    voided = {**first, "status": "entered-in-error"}
    assert "potassium" not in apply(once, record(voided)).readings


def test_history_is_bounded_in_time_and_count():
    many = [obs("8867-4", 70 + i % 5, at=T0 - hours(i)) for i in range(200)]
    state = state_of(*many)
    series = state.readings["heart_rate"]
    assert len(series) == MAX_READINGS
    assert series[-1].at == T0
    old = obs("8867-4", 70, at=T0 - hours(24 * 9))
    assert len(apply(state_of(obs("8867-4", 70)), record(old)).readings["heart_rate"]) == 1


def test_medications_allergies_conditions_and_encounter():
    med = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "warfarin 5 mg tablet"},
        "subject": {"reference": "Patient/p1"},
    }
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"text": "Penicillin"},
        "patient": {"reference": "Patient/p1"},
    }
    refuted = {**allergy, "id": "a2", "verificationStatus": {"coding": [{"code": "refuted"}]}}
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "in-progress", "class": {"code": "IMP"}}
    state = state_of(med, allergy, refuted, encounter)
    assert [m.text for m in state.active_medications()] == ["warfarin 5 mg tablet"]
    assert [a.text for a in state.active_allergies()] == ["Penicillin"]
    assert state.encounter is not None
    assert state.encounter.klass == "IMP"
    stopped = apply(state, record({**med, "status": "stopped"}))
    assert stopped.active_medications() == []


def test_state_round_trips_through_json():
    state = state_of(obs("2823-3", 6.4, "mmol/L"), obs("67775-7", "Voice"))
    assert PatientState.model_validate_json(state.model_dump_json()) == state


def test_a_resource_without_an_id_breaks_the_contract():
    with pytest.raises(RuleInputError):
        apply(PatientState(patient_id="p1"), record({"resourceType": "Condition"}))


def test_an_abated_condition_is_not_active_as_of_the_record():
    abated = condition("http://snomed.info/sct", "65710008") | {"abatementDateTime": "2020-01-01"}
    later = condition("http://snomed.info/sct", "65710008") | {"abatementDateTime": "2999-01-01"}
    state = state_of(abated, later)
    assert [c.ref for c in state.active_conditions()] == [f"Condition/{later['id']}"]


def test_apply_leaves_the_state_it_was_given_as_it_was():
    before = state_of(obs("2823-3", 4.1, "mmol/L", oid="k1"), condition("http://snomed.info/sct", "38341003"))
    snapshot = before.model_dump_json()
    later = obs("2823-3", 6.4, "mmol/L", at=T0 + hours(2), oid="k2")
    retired = obs("2823-3", 4.1, "mmol/L", oid="k1", status="entered-in-error")
    medication = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "medicationCodeableConcept": {"text": "lisinopril 10 mg"},
    }
    after = apply(before, record(later, retired, medication, condition("http://snomed.info/sct", "44054006")))
    assert before.model_dump_json() == snapshot  # same readings, medications, conditions as before
    assert [r.ref for r in after.readings["potassium"]] == ["Observation/k2"]
    assert "MedicationRequest/m1" in after.medications
    assert not before.medications
    assert len(after.conditions) == 2
    assert len(before.conditions) == 1
