"""Builders of FHIR resources and patient state for the decision-support rule tests."""

from datetime import UTC, datetime, timedelta
from itertools import count

from inference.cds.state import PatientState, apply
from kernel.attachments import text_attachment
from kernel.events import Envelope, FhirRecord

T0 = datetime(2025, 3, 6, 8, 0, tzinfo=UTC)
LOINC = "http://loinc.org"
_ids = count(1)
UNITS = {
    "9279-1": "/min",
    "59408-5": "%",
    "8480-6": "mm[Hg]",
    "8867-4": "/min",
    "8310-5": "Cel",
    "3151-8": "L/min",
    "3150-0": "%",
    "9269-2": "{score}",
    "2019-8": "mm[Hg]",
    "6690-2": "10*3/uL",
    "2160-0": "mg/dL",
}


def note(text, nid="n1", *, at=T0, **extra):
    """A DocumentReference (a note) whose text attachment is ``text``."""
    return {
        "resourceType": "DocumentReference",
        "id": nid,
        "status": "current",
        "date": at.isoformat(),
        "content": [{"attachment": text_attachment(text)}],
        **extra,
    }


def envelope(at=T0, message_id="M1"):
    return Envelope(
        source_system="EHR^HOSP", source_message_id=message_id, content_hash="h", received_at=at, trace_id="t"
    )


def obs(code, value, unit=None, *, at=T0, oid=None, status="final", **extra):
    """An Observation of LOINC ``code``; a str ``value`` becomes a CodeableConcept text."""
    res = {
        "resourceType": "Observation",
        "id": oid or f"o{next(_ids)}",
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": at.isoformat(),
        **extra,
    }
    if isinstance(value, str):
        res["valueCodeableConcept"] = {"text": value}
    elif value is not None:
        unit = unit if unit is not None else UNITS.get(code, "")
        res["valueQuantity"] = {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        }
    return res


def vitals(*, rr=16, spo2=97, sbp=120, hr=70, acvpu="Alert", temp=37.0, at=T0):
    """A set of NEWS2 observations (None leaves a parameter out)."""
    pairs = [
        ("9279-1", rr),
        ("59408-5", spo2),
        ("8480-6", sbp),
        ("8867-4", hr),
        ("67775-7", acvpu),
        ("8310-5", temp),
    ]
    return [obs(code, value, at=at) for code, value in pairs if value is not None]


def record(*resources, patient="p1", at=T0, message_id="M1"):
    return FhirRecord(envelope=envelope(at, message_id), patient_id=patient, resources=list(resources))


def state_of(*resources, patient="p1", **kwargs):
    return apply(PatientState(patient_id=patient, **kwargs), record(*resources, patient=patient))


def condition(system, code, status="active"):
    return {
        "resourceType": "Condition",
        "id": f"c{next(_ids)}",
        "clinicalStatus": {"coding": [{"code": status}]},
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
    }


def hours(n):
    return timedelta(hours=n)


def med(text, mid, *, status="active", at=T0):
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"text": text},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": at.isoformat(),
    }


def allergy(text, aid, *, status="active"):
    return {
        "resourceType": "AllergyIntolerance",
        "id": aid,
        "clinicalStatus": {"coding": [{"code": status}]},
        "code": {"text": text},
        "criticality": "high",
        "patient": {"reference": "Patient/p1"},
        "recordedDate": T0.isoformat(),
    }


def egfr(value, oid, at=T0):
    return obs("98979-8", value, "mL/min/{1.73_m2}", at=at, oid=oid)
