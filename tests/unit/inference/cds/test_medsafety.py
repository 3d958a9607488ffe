"""Medication safety: interactions from the curated table, allergy classes, renal dosing bands."""

import pytest

from inference.cds import medsafety
from inference.cds.rules import process, ruleset_from
from kernel.drugs import names_of
from kernel.settings import CdsSettings
from tests.unit.inference.cds.fixtures import T0, allergy, egfr, hours, med, record

RULES = ruleset_from(CdsSettings())


def _run(*records):
    """Records one after another; the alerts each one raised."""
    state, raised = None, []
    for n, resources in enumerate(records):
        at = T0 + hours(n)
        outcome = process(state, record(*resources, message_id=str(n), at=at), RULES, now=at)
        state = outcome.state
        raised.append(sorted((a.rule_id, a.severity, a.key) for a in outcome.alerts))
    return state, raised


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Warfarin Sodium 5 MG Oral Tablet", {"warfarin", "anticoagulant"}),
        ("Ibuprofen 200 MG Oral Tablet", {"ibuprofen", "nsaid"}),
        ("amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet", {"amoxicillin", "clavulanic acid"}),
        ("Sertraline 50 MG", {"sertraline", "ssri"}),
        ("0.9 ML Sodium Chloride solution", set()),  # not a drug the finder lists as one: nothing invented
        ("Aspirn 81 mg", set()),  # misspelt: no fuzzy guess
    ],
)
def test_names_are_generic_ingredients_and_their_classes(text, expected):
    assert expected <= names_of(text)
    if not expected:
        assert names_of(text) & {"aspirin", "nsaid"} == set()


def test_a_new_order_is_checked_against_active_medications():
    _, raised = _run([med("Warfarin 5 MG Oral Tablet", "m1")], [med("Ibuprofen 400 MG Oral Tablet", "m2")])
    assert raised == [[], [("drug-interaction", "critical", "drug-interaction/ibuprofen + warfarin")]]


def test_interactions_listed_for_a_class_reach_its_members():
    # The table lists NSAIDs with methotrexate; ketorolac is an NSAID.
    _, raised = _run([med("Methotrexate 2.5 MG Oral Tablet", "m1")], [med("Ketorolac 10 MG", "m2")])
    assert raised[1] == [("drug-interaction", "critical", "drug-interaction/ketorolac + methotrexate")]


def test_pairs_the_table_does_not_list_raise_nothing():
    _, raised = _run(
        [med("Acetaminophen 325 MG", "m1"), med("Lisinopril 10 MG", "m2")], [med("Amlodipine 5 MG", "m3")]
    )
    assert raised == [[], []]


def test_stopped_medications_and_redelivery_raise_nothing_more():
    first = [med("Warfarin 5 MG", "m1", status="stopped")]
    _, raised = _run(first, [med("Ibuprofen 400 MG", "m2")])
    assert raised == [[], []]
    orders = [med("Warfarin 5 MG", "m1")], [med("Ibuprofen 400 MG", "m2")], [med("Ibuprofen 400 MG", "m2")]
    _, raised = _run(*orders)
    assert [len(r) for r in raised] == [0, 1, 0]


def test_an_ordered_drug_in_an_allergy_class_is_critical_and_cross_reactivity_a_warning():
    _, raised = _run([allergy("Allergy to penicillin", "a1")], [med("Amoxicillin 500 MG Oral Capsule", "m1")])
    assert raised[1] == [("drug-allergy", "critical", "drug-allergy/amoxicillin")]
    _, raised = _run([allergy("Penicillin G", "a1")], [med("Cephalexin 500 MG Oral Capsule", "m1")])
    assert raised[1] == [("drug-allergy", "warning", "drug-allergy/cephalexin")]
    _, raised = _run(
        [allergy("Allergy to penicillin", "a1", status="resolved")], [med("Amoxicillin 500 MG", "m1")]
    )
    assert raised[1] == []


def test_a_new_allergy_is_checked_against_active_medications():
    _, raised = _run(
        [med("Sulfamethoxazole 800 MG / Trimethoprim 160 MG", "m1")], [allergy("Sulfa drugs", "a1")]
    )
    assert raised[1] == [("drug-allergy", "critical", "drug-allergy/sulfamethoxazole")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (29, [("renal-dosing", "warning", "renal-dosing/metformin")]),  # < 30: contraindicated
        (30, [("renal-dosing", "info", "renal-dosing/metformin")]),  # 30-44: do not start
        (44, [("renal-dosing", "info", "renal-dosing/metformin")]),
        (45, []),
    ],
)
def test_renal_bands_on_both_sides(value, expected):
    _, raised = _run([egfr(value, "e1")], [med("Metformin hydrochloride 500 MG Oral Tablet", "m1")])
    assert raised[1] == expected


def test_a_falling_egfr_checks_the_medications_already_given():
    _, raised = _run([med("Nitrofurantoin 100 MG", "m1"), egfr(70, "e1")], [egfr(24, "e2", at=T0 + hours(1))])
    assert raised == [[], [("renal-dosing", "warning", "renal-dosing/nitrofurantoin")]]


def test_findings_explain_themselves_with_the_patients_own_data():
    state, _ = _run([egfr(24, "e1")], [med("Metformin 500 MG", "m1")])
    [alert] = state.alerts.values()
    assert alert.evidence == ("MedicationRequest/m1", "Observation/e1")
    assert "24 mL/min" in alert.summary
    assert "Beers" in alert.citation
    assert alert.thresholds == "eGFR < 30: contraindicated"


def test_draft_orders_are_checked_without_changing_state():
    state, _ = _run([med("Warfarin 5 MG", "m1"), allergy("Penicillin", "a1")])
    before = state.model_copy(deep=True)
    draft = [med("Aspirin 81 MG", "d1"), med("Amoxicillin 500 MG", "d2")]
    findings = medsafety.check_orders(state, draft, at=T0)
    assert sorted((f.rule_id, f.severity) for f in findings) == [
        ("drug-allergy", "critical"),
        ("drug-interaction", "critical"),
    ]
    assert state == before


@pytest.mark.parametrize(
    ("allergy_text", "drug", "conflict"),
    [
        ("ACE inhibitor", "lisinopril 10 MG", "class"),
        ("ACE-inhibitors (angioedema)", "enalapril", "class"),
        ("ARBs", "losartan 50 MG", "class"),
        ("arbitrary reaction to dyes", "losartan 50 MG", None),
        ("Allergy to statins", "atorvastatin", "class"),
    ],
)
def test_class_names_of_several_words_in_allergy_lists(allergy_text, drug, conflict):
    from kernel.drugs import allergy_conflict

    found = allergy_conflict(drug, allergy_text)
    assert (found.kind if found else None) == conflict


RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def coded_med(mid, text=None, *codings, reference=None):
    """A MedicationRequest written some other way: a local text, codings, a Medication reference."""
    resource = med(text or "", mid)
    concept = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]}
    if text:
        concept["text"] = text
    resource["medicationCodeableConcept"] = concept
    if reference:
        del resource["medicationCodeableConcept"]
        resource["medicationReference"] = {"reference": "Medication/x", "display": reference}
    return resource


@pytest.mark.parametrize(
    "ibuprofen",
    [
        coded_med("m2", "Ibuprofen 400 MG Oral Tablet"),  # as before: the text
        coded_med(
            "m2", "NSAID tab 400", (RXNORM, "197806", "ibuprofen 400 MG Oral Tablet")
        ),  # RxNorm display
        coded_med("m2", "Motrin IB"),  # a brand
        coded_med("m2", "PHARM-77 tab", (RXNORM, "197806", "Ibuprofen 400mg")),
        coded_med("m2", None, ("http://hosp.example/formulary", "F7", "IBUPROFEN 400MG TAB")),  # display only
        coded_med("m2", reference="Ibuprofen 400 mg tablet"),  # a Medication reference's display
    ],
)
def test_the_same_drug_however_it_was_written_meets_the_interaction_rule(ibuprofen):
    _, raised = _run([med("Warfarin 5 MG Oral Tablet", "m1")], [ibuprofen])
    assert raised[1] == [("drug-interaction", "critical", "drug-interaction/ibuprofen + warfarin")]


def test_an_allergy_coded_by_its_substance_meets_an_order_of_its_class():
    allergic = allergy("Drug allergy", "a1")
    allergic["code"]["coding"] = [{"system": RXNORM, "code": "7980", "display": "Penicillin G"}]
    _, raised = _run(
        [allergic], [coded_med("m1", "Amox 500", (RXNORM, "308182", "amoxicillin 500 MG Oral Capsule"))]
    )
    assert [r[0] for r in raised[1]] == ["drug-allergy"]


def test_a_local_text_that_names_no_drug_is_not_made_one():
    _, raised = _run([med("Warfarin 5 MG Oral Tablet", "m1")], [coded_med("m2", "PHARM-77 tab")])
    assert raised[1] == []
