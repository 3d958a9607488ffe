"""Diagnostic assistance: each rule at its published thresholds, on both sides; families the
problem list already holds are not suggested; citations are the knowledge base's own."""

from pathlib import Path

import pytest

from indexer.knowledge import knowledge_chunks
from inference.assist import growth
from inference.assist.diagnoses import suggest_diagnoses
from inference.assist.facts import facts
from inference.assist.suggestions import ICD10CM, PASSAGES
from tests.conftest import REPO, synthea_files, synthea_resources
from tests.unit.inference.assist.fixtures import NOW, bp, chart, condition, obs, patient


def families(c):
    return [s.family for s in suggest_diagnoses(facts(c, NOW))]


def one(c, family):
    (found,) = [s for s in suggest_diagnoses(facts(c, NOW)) if s.family == family]
    return found


@pytest.mark.parametrize(("bmi", "expected"), [(29.9, []), (30.0, ["obesity"]), (41, ["obesity"])])
def test_obesity_in_adults_at_bmi_30(bmi, expected):
    assert families(chart(obs("39156-5", bmi, "2026-01-01"))) == expected


def test_obesity_class_is_coded():
    s = one(chart(obs("39156-5", 36.2, "2026-01-01")), "obesity")
    assert [(c.system, c.code) for c in s.code.coding] == [
        ("http://snomed.info/sct", "162864005"),
        (ICD10CM, "E66.812"),
    ]
    assert "36.2" in s.rationale
    assert s.evidence[0].resource_id.startswith("Observation/")


def test_the_cdc_tables_agree_with_the_published_95th_percentile():
    # CDC bmiagerev: boys at 24.0 months, P95 = 19.33801062; girls at 24.0 months, P95 = 19.10623522.
    assert growth.bmi_at_percentile(95, sex="male", age=2.0) == pytest.approx(19.338, abs=0.002)
    assert growth.bmi_percentile(19.338, sex="male", age=2.0) == pytest.approx(95.0, abs=0.05)
    assert growth.bmi_percentile(16.575, sex="male", age=2.0) == pytest.approx(50.0, abs=0.05)
    assert growth.bmi_percentile(20, sex="male", age=1.5) is None  # below the charts


def test_child_obesity_by_bmi_for_age_percentile():
    child = patient(born="2016-06-01", gender="female")  # 9.6 years at the reading
    p95 = growth.bmi_at_percentile(95, sex="female", age=9.6)
    assert families(chart(obs("39156-5", round(p95 + 0.3, 1), "2026-01-01"), person=child)) == ["obesity"]
    assert families(chart(obs("39156-5", round(p95 - 0.3, 1), "2026-01-01"), person=child)) == []
    # 30 kg/m² is not the child threshold: a 10-year-old at 24 is above the 95th percentile
    assert (
        one(chart(obs("39156-5", 24, "2026-01-01"), person=child), "obesity").code.coding[0].code
        == "414916001"
    )


def test_diabetes_needs_two_abnormal_results():
    once = chart(obs("4548-4", 6.8, "2026-01-01"))
    assert families(once) == []
    twice = chart(obs("4548-4", 6.8, "2025-06-01"), obs("4548-4", 7.1, "2026-01-01"))
    s = one(twice, "diabetes")
    assert s.code.coding[0].code == "44054006"
    assert s.code.coding[1].code == "E11.9"
    assert len(s.evidence) == 2
    # one HbA1c and one fasting glucose confirm each other (ADA)
    mixed = chart(obs("4548-4", 6.6, "2026-01-01"), obs("1558-6", 130, "2026-01-02"))
    assert families(mixed) == ["diabetes"]


def test_diabetes_not_suggested_when_the_latest_result_is_normal():
    c = chart(
        obs("4548-4", 6.8, "2024-06-01"), obs("4548-4", 7.1, "2025-01-01"), obs("4548-4", 5.5, "2026-01-01")
    )
    assert families(c) == []


@pytest.mark.parametrize(("a1c", "expected"), [(5.6, []), (5.7, ["prediabetes"]), (6.4, ["prediabetes"])])
def test_prediabetes_range(a1c, expected):
    assert families(chart(obs("4548-4", a1c, "2026-01-01"))) == expected


def test_hba1c_in_mmol_per_mol_is_converted():
    assert families(chart(obs("4548-4", 42, "2026-01-01", unit="mmol/mol"))) == ["prediabetes"]


@pytest.mark.parametrize(
    ("readings", "stage"),
    [
        ([(128, 78, "2026-01-01"), (126, 76, "2026-02-01")], None),
        ([(134, 78, "2026-01-01"), (132, 79, "2026-02-01")], 1),
        ([(118, 84, "2026-01-01"), (122, 82, "2026-02-01")], 1),
        ([(150, 95, "2026-01-01"), (146, 92, "2026-02-01")], 2),
        ([(150, 95, "2026-01-01")], None),  # one occasion is not a diagnosis
    ],
)
def test_hypertension_acc_aha_stages_from_two_occasions(readings, stage):
    c = chart(*(bp(s, d, w) for s, d, w in readings))
    found = [s for s in suggest_diagnoses(facts(c, NOW)) if s.family == "hypertension"]
    if stage is None:
        assert found == []
    else:
        assert f"stage {stage}" in found[0].rationale


def test_hypertension_not_for_children():
    c = chart(bp(150, 95, "2026-01-01"), bp(150, 95, "2026-02-01"), person=patient(born="2015-01-01"))
    assert families(c) == []


def test_ckd_needs_more_than_three_months():
    short = chart(obs("33914-3", 50, "2026-01-01"), obs("33914-3", 48, "2026-03-01"))
    assert families(short) == []
    chronic = chart(
        obs("33914-3", 50, "2025-09-01"), obs("33914-3", 48, "2026-01-01"), obs("14959-1", 45, "2026-01-01")
    )
    s = one(chronic, "ckd")
    assert (s.code.coding[0].code, s.code.coding[1].code) == ("700378005", "N18.31")
    assert "G3aA2" in s.rationale


def test_ckd_run_broken_by_a_normal_result():
    c = chart(
        obs("33914-3", 50, "2025-06-01"), obs("33914-3", 75, "2025-10-01"), obs("33914-3", 52, "2026-01-01")
    )
    assert families(c) == []


def test_ckd_by_albuminuria_with_normal_gfr():
    c = chart(
        obs("14959-1", 40, "2025-06-01"), obs("14959-1", 60, "2026-01-01"), obs("33914-3", 95, "2026-01-01")
    )
    s = one(c, "ckd")
    assert s.code.coding[1].code == "N18.1"
    assert "G1A2" in s.rationale


@pytest.mark.parametrize(
    ("born", "gender", "hb", "anaemic"),
    [
        ("1980-01-01", "male", 12.9, True),
        ("1980-01-01", "male", 13.0, False),
        ("1980-01-01", "female", 11.9, True),
        ("1980-01-01", "female", 12.0, False),
        ("2019-01-01", "female", 11.2, True),  # 7 years: 11.5
        ("2024-09-01", "male", 10.8, False),  # 20 months: 10.5
    ],
)
def test_anaemia_who_2024_thresholds(born, gender, hb, anaemic):
    c = chart(obs("718-7", hb, "2026-05-01"), person=patient(born=born, gender=gender))
    assert families(c) == (["anemia"] if anaemic else [])


def test_anaemia_threshold_in_pregnancy():
    pregnant = condition("Normal pregnancy", "72892002", onset="2026-03-01")  # 13 weeks: first trimester
    c = chart(pregnant, obs("718-7", 11.5, "2026-05-20"), person=patient(born="1995-01-01", gender="female"))
    assert families(c) == []  # 11.5 is anaemia outside pregnancy (12.0), not in it (11.0)


def test_lipids():
    assert families(chart(obs("18262-6", 159, "2026-01-01"))) == []
    assert one(chart(obs("18262-6", 165, "2026-01-01")), "hyperlipidemia").code.coding[0].code == "13644009"
    mixed = chart(obs("2093-3", 250, "2026-01-01"), obs("2571-8", 220, "2026-01-01"))
    assert one(mixed, "hyperlipidemia").code.coding[0].code == "55822004"
    tg = chart(obs("2571-8", 180, "2025-06-01"), obs("2571-8", 190, "2026-01-01"))
    assert families(tg) == ["hypertriglyceridemia"]
    assert families(chart(obs("2571-8", 180, "2025-06-01"), obs("2571-8", 160, "2026-01-01"))) == []


def test_hypothyroidism():
    overt = chart(
        obs("3016-3", 7.2, "2025-11-01"), obs("3016-3", 8.0, "2026-01-01"), obs("3024-7", 0.6, "2026-01-01")
    )
    assert families(overt) == ["hypothyroidism"]
    subclinical = chart(
        obs("3016-3", 6, "2025-11-01"), obs("3016-3", 7, "2026-01-01"), obs("3024-7", 1.1, "2026-01-01")
    )
    assert families(subclinical) == []
    high = chart(obs("3016-3", 11, "2025-11-01"), obs("3016-3", 12, "2026-01-01"))
    assert families(high) == ["hypothyroidism"]
    assert families(chart(obs("3016-3", 12, "2026-01-01"))) == []  # not confirmed


def test_a_documented_family_is_not_suggested_again():
    c = chart(
        obs("39156-5", 33, "2026-01-01"), condition("Body mass index 30+ - obesity (finding)", "162864005")
    )
    assert families(c) == []
    # diabetes on the list, even as a complication, rules out diabetes and prediabetes
    dm = condition("Neuropathy due to type 2 diabetes mellitus (disorder)", "368581000119106")
    c = chart(dm, obs("4548-4", 6.8, "2025-06-01"), obs("4548-4", 7.1, "2026-01-01"))
    assert families(c) == []
    # a resolved problem does not count as held
    past = condition("Obesity", "414916001", abatementDateTime="2020-01-01")
    assert families(chart(past, obs("39156-5", 33, "2026-01-01"))) == ["obesity"]


def test_a_patient_without_data_gets_nothing():
    assert families(chart()) == []


def test_ids_are_deterministic_and_rules_can_be_switched_off():
    c = chart(obs("39156-5", 33, "2026-01-01"))
    assert suggest_diagnoses(facts(c, NOW))[0].id == suggest_diagnoses(facts(c, NOW))[0].id
    assert suggest_diagnoses(facts(c, NOW), disabled=frozenset({"dx-obesity"})) == []


def test_every_cited_passage_is_in_the_knowledge_base_with_that_citation():
    base = REPO / "indexer" / "knowledge_base"
    for key, cited in PASSAGES.items():
        chunks = knowledge_chunks((base / cited.source).read_text(), source=cited.source)
        sections = {(c.section, c.citation) for c in chunks}
        assert (cited.section, cited.citation) in sections, key


def test_icd_10_cm_codes_exist():
    simple = pytest.importorskip("simple_icd_10_cm")
    codes = {c.code for s in _every_suggestion() for c in s.code.coding if c.system == ICD10CM}
    codes |= {"E66.811", "E66.813", "N18.2", "N18.32", "N18.4", "N18.5"}
    for code in codes:
        assert simple.is_valid_item(code), code


def _every_suggestion():
    cases = [
        chart(obs("39156-5", 33, "2026-01-01")),
        chart(obs("4548-4", 6.8, "2025-06-01"), obs("4548-4", 7.1, "2026-01-01")),
        chart(obs("4548-4", 6.0, "2026-01-01")),
        chart(bp(150, 95, "2026-01-01"), bp(150, 95, "2026-02-01")),
        chart(obs("33914-3", 50, "2025-09-01"), obs("33914-3", 48, "2026-01-01")),
        chart(obs("718-7", 10, "2026-01-01")),
        chart(obs("18262-6", 170, "2026-01-01")),
        chart(obs("2571-8", 180, "2025-06-01"), obs("2571-8", 190, "2026-01-01")),
        chart(obs("3016-3", 11, "2025-11-01"), obs("3016-3", 12, "2026-01-01")),
    ]
    return [s for c in cases for s in suggest_diagnoses(facts(c, NOW))]


def test_every_rule_fires_somewhere_and_cites():
    found = _every_suggestion()
    assert {s.rule.id for s in found} == {
        "dx-obesity",
        "dx-diabetes-t2",
        "dx-prediabetes",
        "dx-hypertension",
        "dx-ckd",
        "dx-anemia",
        "dx-hypercholesterolemia",
        "dx-hypertriglyceridemia",
        "dx-hypothyroidism",
    }
    assert all(s.citations and s.evidence and s.rule.version for s in found)


@pytest.mark.parametrize("path", synthea_files()[:12], ids=lambda p: p.stem.split("_")[0])
def test_synthea_patients_numbers_in_rationales_are_in_the_record(path: Path):
    c = chart(*synthea_resources(path))
    for s in suggest_diagnoses(facts(c, NOW)):
        values = {str(r["valueQuantity"]["value"]) for r in c.of("Observation") if "valueQuantity" in r}
        values |= {
            str(comp["valueQuantity"]["value"])
            for r in c.of("Observation")
            for comp in r.get("component", [])
            if "valueQuantity" in comp
        }
        for e in s.evidence:
            assert e.resource_id in c.resources
            assert any(v in e.text for v in values)
