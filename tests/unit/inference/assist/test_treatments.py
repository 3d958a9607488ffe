"""Treatment suggestions: guideline first-line choices, personalised by comorbidity and group,
never a drug the record contraindicates, holds and monitoring."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.assist.diagnoses import suggest_diagnoses
from inference.assist.facts import facts
from inference.assist.suggestions import PASSAGES
from inference.assist.treatments import review_order, suggest_treatments
from kernel.drugs import names_of
from tests.conftest import synthea_files, synthea_resources
from tests.unit.inference.assist.fixtures import NOW, allergy, bp, chart, condition, med, obs, patient

HTN = condition("Essential hypertension (disorder)", "59621000")
DM = condition("Diabetes mellitus type 2 (disorder)", "44054006")


def suggestions(c):
    f = facts(c, NOW)
    return suggest_treatments(f, suggest_diagnoses(f))


def starts(c):
    return [(s.for_.coding[0].code, s.medication.display) for s in suggestions(c) if s.kind == "start"]


def test_hypertension_first_line_is_a_thiazide_by_default_with_alternatives():
    (s,) = [s for s in suggestions(chart(HTN)) if s.kind == "start"]
    assert s.medication.coding[0].system == "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert (s.medication.display, s.medication.coding[0].code) == ("chlorthalidone", "2409")
    assert [a.display for a in s.alternatives] == ["lisinopril", "losartan", "amlodipine"]
    assert s.citations[0].source == "acc-aha-hypertension.md"
    assert s.rule.id == "tx-hypertension"
    assert s.rule.version


def test_diabetes_puts_an_ace_inhibitor_first_and_asks_for_potassium_and_creatinine():
    found = suggestions(chart(HTN, DM))
    start = next(s for s in found if s.kind == "start" and s.for_.coding[0].code == "59621000")
    assert start.medication.display == "lisinopril"
    assert any("diabetes" in p for p in start.personalisation)
    monitor = next(s for s in found if s.kind == "monitor")
    assert {c.code for c in monitor.test.coding} == {"2823-3", "2160-0"}


def test_ckd_with_albuminuria_prefers_ace_inhibitor():
    ckd = condition("Chronic kidney disease stage 3 (disorder)", "433144002")
    c = chart(HTN, ckd, obs("14959-1", 120, "2026-01-01"))
    assert ("59621000", "lisinopril") in starts(c)


def test_black_adult_gets_thiazide_or_ccb_first():
    (s,) = [s for s in suggestions(chart(HTN, person=patient(black=True))) if s.kind == "start"]
    assert s.medication.display == "chlorthalidone"
    assert next(a.display for a in s.alternatives) == "amlodipine"
    assert any("Black" in p for p in s.personalisation)


def test_ace_inhibitor_allergy_moves_to_an_arb_and_says_why():
    c = chart(HTN, DM, allergy("Lisinopril (angioedema)"))
    start = next(s for s in suggestions(c) if s.kind == "start" and s.for_.coding[0].code == "59621000")
    assert start.medication.display == "losartan"
    assert any("allergy" in p and "lisinopril" in p for p in start.personalisation)
    assert "lisinopril" not in [a.display for a in start.alternatives]
    assert "drug-allergy.md" in [c.source for c in start.citations]


def test_pregnancy_excludes_ace_inhibitors_arbs_and_statins():
    pregnant = condition("Normal pregnancy", "72892002", onset="2026-03-01")
    person = patient(born="1994-01-01", gender="female")
    found = suggestions(chart(HTN, DM, pregnant, obs("18262-6", 200, "2026-01-01"), person=person))
    drugs = {s.medication.display for s in found if s.kind == "start"}
    assert "labetalol" in drugs
    assert not drugs & {"lisinopril", "losartan", "atorvastatin", "rosuvastatin"}


def test_an_interacting_active_drug_excludes_the_candidate():
    # ACE inhibitors and ARBs with potassium-sparing diuretics are a listed interaction.
    c = chart(HTN, DM, med("Spironolactone 25 MG Oral Tablet"))
    for_htn = [s for s in suggestions(c) if s.kind == "start" and s.for_.coding[0].code == "59621000"]
    # spironolactone is an antihypertensive: nothing new is started for hypertension
    assert for_htn == []
    # ordering lisinopril now is flagged, with a reason
    advice = review_order(facts(c, NOW), [], "lisinopril 10 MG Oral Tablet")
    assert advice is not None
    assert advice.severity == "warning"
    assert "spironolactone" in advice.reason.lower()


def test_a_treated_problem_gets_no_new_start():
    c = chart(HTN, med("Hydrochlorothiazide 25 MG"))
    assert [s for s in suggestions(c) if s.kind == "start"] == []


def test_metformin_for_type_2_diabetes_unless_egfr_below_30():
    assert ("44054006", "metformin") in starts(chart(DM, obs("33914-3", 75, "2026-01-01")))
    low = chart(DM, obs("33914-3", 25, "2026-01-01"))
    assert all(d != "metformin" for _, d in starts(low))
    borderline = chart(DM, obs("33914-3", 40, "2026-01-01"))
    assert all(d != "metformin" for _, d in starts(borderline))  # not started at 30-45


@pytest.mark.parametrize(("egfr", "kind"), [(25, "hold"), (40, "adjust-dose"), (60, None)])
def test_active_metformin_against_renal_function(egfr, kind):
    c = chart(DM, med("24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet", rx="860975"))
    c = chart(*c.resources.values(), obs("33914-3", egfr, "2026-05-01"))
    kinds = [
        s.kind for s in suggestions(c) if s.medication is not None and s.medication.display == "metformin"
    ]
    assert kinds == ([kind] if kind else [])


def test_statin_intensity_by_risk():
    mi = condition("Myocardial Infarction", "22298006")
    high = [
        s for s in suggestions(chart(mi, DM)) if s.kind == "start" and s.medication.display == "atorvastatin"
    ]
    assert "40 mg" in high[0].dose
    assert any("ASCVD" in p for p in high[0].personalisation)
    moderate = [
        s for s in suggestions(chart(DM)) if s.kind == "start" and s.medication.display == "atorvastatin"
    ]
    assert "20 mg" in moderate[0].dose  # diabetes, 66 years
    ldl = chart(obs("18262-6", 195, "2026-01-01"), person=patient(born="1980-01-01"))
    found = [s for s in suggestions(ldl) if s.kind == "start"]
    assert found[0].medication.display == "atorvastatin"
    assert "high intensity" in found[0].dose


def test_statin_allergy_means_no_statin():
    c = chart(DM, allergy("Statins"))
    assert all(
        s.medication is None or s.medication.display not in ("atorvastatin", "rosuvastatin")
        for s in suggestions(c)
    )


def test_hba1c_due_every_six_months():
    recent = chart(DM, obs("4548-4", 6.5, "2026-03-01"))
    assert not [s for s in suggestions(recent) if s.kind == "order-test"]
    old = chart(DM, obs("4548-4", 6.5, "2025-09-01"))
    (due,) = [s for s in suggestions(old) if s.kind == "order-test"]
    assert due.test.coding[0].code == "4548-4"
    above_goal = chart(DM, obs("4548-4", 8.1, "2026-01-15"))  # 4.5 months: due at 3 when not at goal
    assert [s for s in suggestions(above_goal) if s.kind == "order-test"]


def test_ace_inhibitor_started_without_follow_up_labs():
    c = chart(HTN, med("Lisinopril 10 MG Oral Tablet", authored="2026-05-20"))
    (check,) = [s for s in suggestions(c) if s.kind == "order-test"]
    assert {x.code for x in check.test.coding} == {"2823-3", "2160-0"}
    done = chart(
        HTN,
        med("Lisinopril 10 MG Oral Tablet", authored="2026-05-20"),
        obs("2823-3", 4.4, "2026-05-28"),
        obs("2160-0", 1.0, "2026-05-28"),
    )
    assert not [s for s in suggestions(done) if s.kind == "order-test"]


def test_an_active_drug_that_pregnancy_contraindicates_is_held():
    pregnant = condition("Normal pregnancy", "72892002", onset="2026-03-01")
    c = chart(
        HTN, pregnant, med("Lisinopril 10 MG Oral Tablet"), person=patient(born="1994-01-01", gender="female")
    )
    holds = [s for s in suggestions(c) if s.kind == "hold"]
    assert holds
    assert "pregnancy" in holds[0].rationale
    assert holds[0].citations[0].source == "acc-aha-hypertension.md"
    allergic = chart(HTN, med("Lisinopril 10 MG Oral Tablet"), allergy("ACE inhibitor"))
    (hold,) = [s for s in suggestions(allergic) if s.kind == "hold"]
    assert hold.citations[0].source == "drug-allergy.md"


def test_suggested_problems_are_treated_too():
    c = chart(bp(150, 95, "2026-01-01"), bp(152, 96, "2026-02-01"))
    assert [d for _, d in starts(c)] == ["chlorthalidone"]


def test_order_not_the_first_choice_for_this_patient():
    c = chart(HTN, DM)
    advice = review_order(facts(c, NOW), [], "amlodipine 5 MG Oral Tablet")
    assert advice is not None
    assert advice.severity == "info"
    assert advice.alternative is not None
    assert advice.alternative.medication.display == "lisinopril"
    assert review_order(facts(c, NOW), [], "lisinopril 10 MG Oral Tablet") is None
    assert review_order(facts(c, NOW), [], "acetaminophen 500 MG") is None  # not a drug these rules cover


def test_children_get_no_drug_starts():
    c = chart(HTN, DM, person=patient(born="2014-01-01"))
    assert starts(c) == []


# What each planted fact rules out, by this test's own reading of the labels and guidelines.
_RAAS = {"lisinopril", "losartan"}
_PLANTS = {
    "allergy lisinopril": ({"lisinopril"}, lambda: allergy("Lisinopril")),
    "allergy ACE inhibitor": ({"lisinopril"}, lambda: allergy("ACE inhibitor (angioedema)")),
    "allergy ARB": ({"losartan"}, lambda: allergy("ARB")),
    "allergy chlorthalidone": ({"chlorthalidone"}, lambda: allergy("Chlorthalidone")),
    "allergy amlodipine": ({"amlodipine"}, lambda: allergy("Amlodipine")),
    "allergy statins": ({"atorvastatin", "rosuvastatin"}, lambda: allergy("Statins")),
    "allergy metformin": ({"metformin"}, lambda: allergy("Metformin")),
    "lithium": (_RAAS | {"chlorthalidone"}, lambda: med("Lithium carbonate 300 MG Oral Capsule")),
    "clarithromycin": ({"atorvastatin", "rosuvastatin"}, lambda: med("Clarithromycin 500 MG Oral Tablet")),
    "eGFR 22": ({"metformin"}, lambda: obs("33914-3", 22, "2026-05-01")),
    "pregnancy": (
        _RAAS | {"atorvastatin", "rosuvastatin"},
        lambda: condition("Normal pregnancy", "72892002", onset="2026-04-01"),
    ),
}


@settings(max_examples=150, deadline=None)
@given(
    problems=st.sets(st.sampled_from(["htn", "dm", "lipids"]), min_size=1),
    planted=st.sets(st.sampled_from(sorted(_PLANTS)), max_size=4),
    black=st.booleans(),
)
def test_no_start_suggestion_is_contraindicated_by_what_the_record_holds(problems, planted, black):
    resources = {"htn": [HTN], "dm": [DM], "lipids": [condition("Hyperlipidemia", "55822004")]}
    rs = [r for p in sorted(problems) for r in resources[p]]
    rs += [_PLANTS[p][1]() for p in sorted(planted)]
    ruled_out = set().union(*[_PLANTS[p][0] for p in planted]) if planted else set()
    person = patient(born="1970-01-01", gender="female", black=black)
    found = suggestions(chart(*rs, person=person))
    started = {s.medication.display for s in found if s.kind == "start"}
    assert not started & ruled_out
    for s in found:
        assert s.citations
        assert s.rule.version


@pytest.mark.parametrize("path", synthea_files(), ids=lambda p: p.stem.split("_")[0])
def test_synthea_patients_treatments_stay_within_their_problems_and_active_drugs(path):
    c = chart(*synthea_resources(path))
    f = facts(c, NOW)
    suggested = suggest_diagnoses(f)
    problems = {p.snomed for p in f.problems} | {s.code.coding[0].code for s in suggested}
    active = set().union(*(names_of(x.name) for x in f.active_courses())) if f.active_courses() else set()
    for s in suggest_treatments(f, suggested):
        if s.rule.id != "tx-contraindicated":
            assert s.for_.coding[0].code in problems  # only the patient's own problems are treated
        if s.kind == "start":
            assert s.medication is not None
            assert s.medication.coding[0].system == "http://www.nlm.nih.gov/research/umls/rxnorm"
            # never a drug, or a drug of a class, the patient already takes
            assert not names_of(s.medication.display) & active
        assert all(c in PASSAGES.values() for c in s.citations)
