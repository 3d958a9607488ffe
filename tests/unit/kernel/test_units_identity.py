"""UCUM codes and conversion (ucumvert/pint), and linking a FHIR Patient to its HL7 key."""

from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from kernel.events import FhirInbound, patient_key
from kernel.identity import authority_of, hl7_key
from kernel.units import UCUM, convert, quantity_unit, ucum_code
from stream.fhir_input import normalize_fhir
from stream.normalize import normalize_hl7


@pytest.mark.parametrize(
    ("written", "code"),
    [
        ("mmol/L", "mmol/L"),
        ("mg/dL", "mg/dL"),
        ("{cells}/uL", "{cells}/uL"),
        ("mm[Hg]", "mm[Hg]"),
        ("beats/min", "/min"),
        ("bpm", "/min"),
        ("mmHg", "mm[Hg]"),
        ("mg/hr", "mg/h"),
        ("mcg/mL", "ug/mL"),
        ("x10E3/uL", "10*3/uL"),
        ("K/uL", "10*3/uL"),  # as written it parses as kelvin per microlitre
        ("degF", "[degF]"),
    ],
)
def test_units_become_ucum_codes(written, code):
    assert ucum_code(written) == code


@pytest.mark.parametrize("written", ["cells per microliter", "percent", "Hours", "", "mg//dL"])
def test_text_that_is_not_ucum_gets_no_code(written):
    assert ucum_code(written) is None


def test_quantity_keeps_the_senders_text_and_adds_the_code():
    assert quantity_unit("10*3/uL", "thousand per microliter") == {
        "unit": "thousand per microliter",
        "system": UCUM,
        "code": "10*3/uL",
    }
    assert quantity_unit("", "cells per microliter") == {"unit": "cells per microliter"}


def test_conversion_between_ucum_units():
    assert convert(98.6, "[degF]", "Cel") == Decimal("37")
    assert convert(5, "mg/dL", "g/L") == Decimal("0.05")
    assert convert(2, "h", "min") == Decimal("120")
    assert convert(Decimal("6.4"), "mmol/L", "mmol/L") == Decimal("6.4")


def test_conversion_refuses_different_dimensions():
    assert convert(1, "mg/dL", "mmol/L") is None  # needs a molar mass
    assert convert(1, "kg", "m") is None
    assert convert(1, "not a unit", "kg") is None


def test_hl7_units_claim_ucum_only_when_they_are():
    text = (
        "MSH|^~\\&|LIS|MERCY|EHR|MERCY|202503060830||ORU^R01^ORU_R01|U1|P|2.5.1\r"
        "PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
        "OBR|1|O1|F1|80048^BMP^C4|||202503060830\r"
        "OBX|1|NM|8867-4^Heart rate^LN||72|beats/min^^ISO+|||||F\r"
        "OBX|2|NM|777-3^Platelets^LN||250|cells per microliter|||||F\r"
        "OBX|3|NM|2345-7^Glucose^LN||5.5|mmol/L^mmol/L^L|||||F\r"
    )
    heart, platelets, glucose = (
        r["valueQuantity"]
        for r in normalize_hl7(text, tz=ZoneInfo("UTC")).resources
        if r["resourceType"] == "Observation"
    )
    assert heart == {"value": 72, "unit": "beats/min", "system": UCUM, "code": "/min"}
    assert platelets == {"value": 250, "unit": "cells per microliter"}
    assert glucose == {"value": 5.5, "unit": "mmol/L"}  # a local coding system (L) is not UCUM


def test_fhir_quantities_get_their_ucum_code():
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "Heart rate"},
        "valueQuantity": {"value": 72, "unit": "beats/min"},
        "component": [{"code": {"text": "x"}, "valueQuantity": {"value": 1, "unit": "per fortnight"}}],
    }
    [group] = normalize_fhir(FhirInbound(interaction="update", resources=[obs]))
    [out] = group.resources
    assert out["valueQuantity"] == {"value": 72, "unit": "beats/min", "system": UCUM, "code": "/min"}
    assert out["component"][0]["valueQuantity"] == {"value": 1, "unit": "per fortnight"}


MRN = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}


def test_authority_from_configuration_assigner_or_oid():
    configured = {"system": "http://mercy.example/mrn", "value": "100002"}
    assert authority_of(configured, {"http://mercy.example/mrn": "MERCY"}) == "MERCY"
    assert authority_of(configured, {}) is None  # untyped, unconfigured: not an MRN we can link
    assert authority_of({**MRN, "value": "1", "assigner": {"display": "MERCY"}}, {}) == "MERCY"
    assert authority_of({**MRN, "value": "1", "system": "urn:oid:2.16.840.1.113883.19.5"}, {}) == (
        "2.16.840.1.113883.19.5"
    )
    ssn = {"type": {"coding": [{"code": "SS"}]}, "system": "http://hl7.org/fhir/sid/us-ssn", "value": "1"}
    assert authority_of(ssn, {}) is None


def test_fhir_patient_is_keyed_like_its_hl7_messages():
    hl7 = normalize_hl7(
        "MSH|^~\\&|ADT|MERCY|EHR|MERCY|202503030415||ADT^A04|A1|P|2.5.1\r"
        "PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r",
        tz=ZoneInfo("UTC"),
    )
    patient = {
        "resourceType": "Patient",
        "id": "ehr-123",
        "identifier": [{"system": "http://mercy.example/mrn", "value": "100002"}],
    }
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/ehr-123"},
    }
    inbound = FhirInbound(interaction="transaction", resources=[patient, obs])
    [group] = normalize_fhir(inbound, authorities={"http://mercy.example/mrn": "MERCY"})
    assert group.patient_id == hl7.patient_id == patient_key("MERCY", "100002")
    linked = next(r for r in group.resources if r["resourceType"] == "Patient")
    assert linked["id"] == "ehr-123"  # the EHR's id is kept for write-back
    assert linked["link"] == [{"other": {"reference": f"Patient/{hl7.patient_id}"}, "type": "seealso"}]
    [unlinked] = normalize_fhir(inbound)
    assert unlinked.patient_id == "ehr-123"
    assert hl7_key(patient, {}) is None
