"""Charts for the assistance tests: a patient and the resources the rules read."""

import zlib
from datetime import UTC, datetime

from kernel.chart import Chart, apply

NOW = datetime(2026, 6, 1, tzinfo=UTC)
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UNITS = {
    "39156-5": "kg/m2",
    "4548-4": "%",
    "1558-6": "mg/dL",
    "718-7": "g/dL",
    "33914-3": "mL/min/{1.73_m2}",
    "14959-1": "mg/g",
    "18262-6": "mg/dL",
    "2093-3": "mg/dL",
    "2571-8": "mg/dL",
    "3016-3": "m[IU]/L",
    "3024-7": "ng/dL",
    "2823-3": "mmol/L",
    "2160-0": "mg/dL",
}


NAMES = {
    "39156-5": "Body mass index",
    "4548-4": "Hemoglobin A1c",
    "1558-6": "Fasting glucose",
    "718-7": "Hemoglobin",
    "33914-3": "eGFR",
    "14959-1": "Microalbumin/creatinine ratio",
    "18262-6": "LDL cholesterol",
    "2093-3": "Total cholesterol",
    "2571-8": "Triglycerides",
    "3016-3": "TSH",
    "3024-7": "Free T4",
    "2823-3": "Potassium",
    "2160-0": "Creatinine",
}


def patient(*, born="1960-01-01", gender="male", black=False):
    res = {"resourceType": "Patient", "id": "p", "birthDate": born, "gender": gender}
    if black:
        res["extension"] = [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [{"url": "ombCategory", "valueCoding": {"code": "2054-5", "display": "Black"}}],
            }
        ]
    return res


_n = iter(range(10**6))


def obs(loinc, value, when, unit=None):
    return {
        "resourceType": "Observation",
        "id": f"o{next(_n)}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": NAMES[loinc]}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit or UNITS[loinc], "code": unit or UNITS[loinc]},
    }


def bp(systolic, diastolic, when):
    return {
        "resourceType": "Observation",
        "id": f"o{next(_n)}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": when,
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": systolic, "unit": "mm[Hg]", "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": diastolic, "unit": "mm[Hg]", "code": "mm[Hg]"},
            },
        ],
    }


def condition(display, code="1", onset="2015-01-01", **extra):
    return {
        "resourceType": "Condition",
        "id": f"c{next(_n)}",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
        "subject": {"reference": "Patient/p"},
        "onsetDateTime": onset,
        **extra,
    }


def med(display, rx=None, status="active", authored="2024-01-01"):
    rx = rx or str(zlib.crc32(display.encode()) % 10**6)
    return {
        "resourceType": "MedicationRequest",
        "id": f"m{next(_n)}",
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": rx, "display": display}],
            "text": display,
        },
        "subject": {"reference": "Patient/p"},
        "authoredOn": authored,
    }


def allergy(text):
    return {
        "resourceType": "AllergyIntolerance",
        "id": f"a{next(_n)}",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"text": text},
        "patient": {"reference": "Patient/p"},
    }


def chart(*resources, person=None):
    return apply(Chart("p"), [person or patient(), *resources])
