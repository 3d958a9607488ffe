"""Assistance over the third-party FHIR samples: every resource of the corpora (HL7's R4
examples, Firely's, Microsoft's), alone in a chart and all in one, goes through the clinical
picture, the diagnosis and treatment rules and the answer summary without an exception."""

import json
from datetime import UTC, datetime

import pytest

from inference.assist.answers import summary
from inference.assist.diagnoses import suggest_diagnoses
from inference.assist.facts import facts
from inference.assist.treatments import review_order, suggest_treatments
from kernel.chart import Chart, apply, medication_courses, problem_list
from tests.conftest import corpora_dir

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SAMPLES = (
    "fhir-test-cases-r4-examples",
    "firely-net-sdk",
    "microsoft-fhir-converter",
    "microsoft-fhir-server",
)


def _resources(obj):
    if isinstance(obj, dict):
        if obj.get("resourceType") == "Bundle":
            for entry in obj.get("entry") or []:
                if isinstance(entry, dict):
                    yield from _resources(entry.get("resource"))
        elif obj.get("resourceType") and obj.get("id"):
            yield obj


def _corpus():
    found = []
    for name in SAMPLES:
        for path in sorted((corpora_dir() / "fhir" / name).rglob("*.json")):
            try:
                found += list(_resources(json.loads(path.read_text(encoding="utf-8-sig"))))
            except (ValueError, UnicodeDecodeError):
                continue  # the corpora hold deliberately broken files for parser tests
    return found


CORPUS = _corpus()


def _everything(chart):
    f = facts(chart, NOW)
    suggested = suggest_diagnoses(f)
    suggest_treatments(f, suggested)
    review_order(f, suggested, "lisinopril 10 MG Oral Tablet")
    summary(f, "Why is the creatinine rising and how is the blood pressure?")
    problem_list(chart, NOW)
    medication_courses(chart, NOW)


def test_the_samples_hold_what_the_rules_read():
    kinds = {r["resourceType"] for r in CORPUS}
    assert {"Patient", "Condition", "Observation", "MedicationRequest", "AllergyIntolerance"} <= kinds


@pytest.mark.parametrize("resource", CORPUS, ids=lambda r: f"{r['resourceType']}/{r['id']}"[:60])
def test_one_resource_alone(resource):
    _everything(apply(Chart("p"), [resource]))


def test_all_of_them_in_one_chart():
    _everything(apply(Chart("p"), CORPUS))
