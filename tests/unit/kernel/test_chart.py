"""The clinical picture: problem list (current vs past, problems vs situations and social
findings) and medication courses, on constructed charts and over every Synthea patient."""

from datetime import UTC, datetime

import pytest

from kernel.chart import (
    Chart,
    apply,
    classify,
    current_problems,
    kind_of,
    medication_courses,
    problem_list,
)
from tests.conftest import synthea_files, synthea_resources

NOW = datetime(2026, 12, 1, tzinfo=UTC)
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"


def condition(cid, display, *, status="active", category=None, onset="2020-01-01", encounter=None, **extra):
    res = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1", "display": display}]},
        "subject": {"reference": "Patient/p"},
        "onsetDateTime": onset,
        **extra,
    }
    if category:
        res["category"] = [{"coding": [{"system": CATEGORY, "code": category}]}]
    if encounter:
        res["encounter"] = {"reference": f"Encounter/{encounter}"}
    return res


def order(oid, display, authored, *, status="stopped", rx="1"):
    return {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rx, "display": display}
            ]
        },
        "subject": {"reference": "Patient/p"},
        "authoredOn": authored,
    }


def chart(*resources):
    return apply(Chart("p"), resources)


def test_an_old_encounter_diagnosis_of_an_acute_disorder_is_past():
    # The Synthea case: sepsis diagnosed at a 1976 encounter, status active, no abatement.
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "period": {"end": "1976-05-02"}}
    sepsis = condition(
        "c1", "Sepsis (disorder)", category="encounter-diagnosis", onset="1976-05-01", encounter="e1"
    )
    c = chart(enc, sepsis)
    assert classify(c, sepsis, NOW).status == "past"
    assert current_problems(c, NOW) == []


def test_an_encounter_diagnosis_without_its_encounter_is_past_after_the_acute_window():
    recent = condition(
        "c1", "Acute bronchitis (disorder)", category="encounter-diagnosis", onset="2026-11-20"
    )
    old = condition("c2", "Acute bronchitis (disorder)", category="encounter-diagnosis", onset="2025-01-01")
    c = chart(recent, old)
    assert [p.ref for p in current_problems(c, NOW)] == ["Condition/c1"]


def test_a_chronic_encounter_diagnosis_stays_on_the_list():
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished"}
    dm = condition(
        "c1",
        "Diabetes mellitus type 2 (disorder)",
        category="encounter-diagnosis",
        onset="1990-01-01",
        encounter="e1",
    )
    assert [p.text for p in current_problems(chart(enc, dm), NOW)] == ["Diabetes mellitus type 2 (disorder)"]


def test_an_encounter_diagnosis_of_an_open_encounter_is_current():
    enc = {"resourceType": "Encounter", "id": "e1", "status": "in-progress"}
    pneu = condition(
        "c1", "Pneumonia (disorder)", category="encounter-diagnosis", onset="2026-11-30", encounter="e1"
    )
    assert classify(chart(enc, pneu), pneu, NOW).status == "current"


def test_a_problem_list_item_is_longitudinal():
    item = condition("c1", "Osteoarthritis of knee", category="problem-list-item", onset="2001-01-01")
    assert classify(chart(item), item, NOW).status == "current"


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"abatementDateTime": "2010-01-01"}, "past"),
        ({"abatementString": "resolved in childhood"}, "past"),
        ({"abatementDateTime": "2030-01-01"}, "current"),  # abates later than the chart is read
        ({}, "current"),
    ],
)
def test_abatement_ends_a_problem(extra, status):
    c = condition("c1", "Asthma", **extra)
    assert classify(chart(c), c, NOW).status == status


@pytest.mark.parametrize("clinical", ["resolved", "inactive", "remission"])
def test_clinical_status_ends_a_problem(clinical):
    c = condition("c1", "Asthma", status=clinical)
    assert current_problems(chart(c), NOW) == []


@pytest.mark.parametrize(
    ("display", "kind"),
    [
        ("Received higher education (finding)", "social"),
        ("Risk activity involvement (finding)", "social"),
        ("Full-time employment (finding)", "social"),
        ("Housing unsatisfactory (finding)", "social"),
        ("Medication review due (situation)", "situation"),
        ("History of appendectomy", "situation"),
        ("Body mass index 30+ - obesity (finding)", "finding"),
        ("Prediabetes", "disorder"),
        ("Anemia (disorder)", "disorder"),
        ("Chronic pain", "disorder"),
    ],
)
def test_situations_and_social_findings_are_not_problems(display, kind):
    assert kind_of(display) == kind


def test_the_problem_list_keeps_disorders_and_clinical_findings_only():
    c = chart(
        condition("c1", "Received higher education (finding)"),
        condition("c2", "Risk activity involvement (finding)"),
        condition("c3", "Body mass index 30+ - obesity (finding)"),
        condition("c4", "Essential hypertension (disorder)"),
    )
    assert sorted(p.ref for p in current_problems(c, NOW)) == ["Condition/c3", "Condition/c4"]
    assert len(problem_list(c, NOW)) == 4  # the others are kept, classified


def test_orders_of_one_drug_collapse_into_one_course():
    c = chart(
        *(order(f"m{i}", "cisplatin 50 MG/ML Injection", f"2020-0{i}-01", rx="309311") for i in range(1, 5))
    )
    (course,) = medication_courses(c)
    assert course.refs == tuple(f"MedicationRequest/m{i}" for i in range(1, 5))
    assert course.start == datetime(2020, 1, 1, tzinfo=UTC)
    assert course.last == datetime(2020, 4, 1, tzinfo=UTC)
    assert not course.active


def test_a_course_is_active_while_an_order_is_and_doses_are_separate_courses():
    c = chart(
        order("m1", "Lisinopril 10 MG", "2020-01-01", rx="314076"),
        order("m2", "Lisinopril 10 MG", "2021-01-01", rx="314076", status="active"),
        order("m3", "Lisinopril 20 MG", "2022-01-01", rx="314077"),
    )
    courses = medication_courses(c)
    assert [(x.name, x.active, len(x.refs)) for x in courses] == [
        ("Lisinopril 10 MG", True, 2),
        ("Lisinopril 20 MG", False, 1),
    ]
    # read as of 2020: the later orders are not there yet
    assert [len(x.refs) for x in medication_courses(c, datetime(2020, 6, 1, tzinfo=UTC))] == [1]


SYNTHEA = synthea_files()


@pytest.mark.parametrize("path", SYNTHEA, ids=lambda p: p.stem.split("_")[0])
def test_the_synthea_patients_problem_lists_and_courses(path):
    c = chart(*synthea_resources(path))
    problems = problem_list(c, NOW)
    assert len(problems) == len(c.of("Condition"))
    for p in problems:
        res = c.resources[p.ref]
        if p.is_current_problem:
            assert "abatementDateTime" not in res or res["abatementDateTime"] > NOW.isoformat()
            assert p.kind in ("disorder", "finding")
            assert not p.text.lower().startswith("history of")
        elif "abatementDateTime" in res:
            assert p.status == "past"
    # Every order is in exactly one course, and a course never repeats a drug at one dose.
    courses = medication_courses(c)
    refs = [r for course in courses for r in course.refs]
    assert sorted(refs) == sorted(f"MedicationRequest/{m['id']}" for m in c.of("MedicationRequest"))
    keys = [(course.rxnorm or course.name, course.dose) for course in courses]
    assert len(keys) == len(set(keys))


def test_synthea_has_the_cases_the_views_exist_for():
    # Not every patient shows them, but the corpus must: otherwise the test above proves little.
    situations = past = repeated = 0
    for path in SYNTHEA:
        c = chart(*synthea_resources(path))
        problems = problem_list(c, NOW)
        situations += sum(p.kind == "situation" for p in problems)
        past += sum(p.status == "past" for p in problems)
        repeated += sum(len(x.refs) > 1 for x in medication_courses(c))
    assert situations >= 5
    assert past >= 50
    assert repeated >= 10


def test_a_discharge_summary_keeps_the_diagnoses_of_its_own_stay():
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "period": {"end": "2026-11-30"}}
    pneu = condition(
        "c1", "Pneumonia (disorder)", category="encounter-diagnosis", onset="2026-11-25", encounter="e1"
    )
    c = chart(enc, pneu)
    assert current_problems(c, NOW) == []
    assert [p.ref for p in current_problems(c, NOW, encounter="Encounter/e1")] == ["Condition/c1"]
    # read as of the day before discharge, the stay is still open
    assert classify(c, pneu, datetime(2026, 11, 28, tzinfo=UTC)).status == "current"


def test_the_chart_store_reads_the_resources_asked_for_without_the_rest(tmp_path):
    from kernel.chart_store import ChartStore

    store = ChartStore(tmp_path / "charts.sqlite")
    k = {"resourceType": "Observation", "id": "k", "status": "final"}
    e = {"resourceType": "Encounter", "id": "e", "status": "in-progress"}
    store.apply("p1", [k, e])
    amended = {**k, "status": "amended"}
    store.apply("p2", [amended])
    assert store.resources("p1", ["Observation/k", "Encounter/none"]) == {"Observation/k": k}
    assert store.resources("p2", ["Observation/k", "Encounter/e"]) == {"Observation/k": amended}
    store.apply("p1", [{**k, "status": "entered-in-error"}])
    assert store.resources("p1", ["Observation/k", "Encounter/e"]) == {"Encounter/e": e}
    store.close()
