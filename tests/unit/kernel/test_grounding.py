"""The grounding guard: numbers, units, dates, times and drugs must be in a cited resource."""

import pytest

from kernel.grounding import (
    Evidence,
    Sentence,
    attribute,
    check,
    facts,
    guard,
    split_sentences,
)

K = Evidence("Observation/k", "Potassium 6.2 mmol/L (critical high) 2025-01-01 11:00")
NA = Evidence("Observation/na", "Sodium 139 mmol/L 2025-01-01 11:00")
WARFARIN = Evidence(
    "MedicationRequest/w", "Medication order: Warfarin 5 MG Oral Tablet (active; 1 tablet daily) 2025-01-02"
)
EVIDENCE = {e.ref: e for e in (K, NA, WARFARIN)}


def verdict(text, *cited, generated=False):
    return check(Sentence(text, cited, generated=generated), EVIDENCE)


@pytest.mark.parametrize(
    ("text", "cited"),
    [
        ("Potassium was 6.2 mmol/L on 2025-01-01 at 11:00.", ("Observation/k",)),
        ("Potassium 6.20 mmol/L.", ("Observation/k",)),  # same number, other notation
        ("Warfarin 5 mg daily was started on January 2, 2025.", ("MedicationRequest/w",)),
        ("Warfarin was started on 2 Jan 2025.", ("MedicationRequest/w",)),
        ("Sodium 139 mmol/L and potassium 6.2 mmol/L.", ("Observation/na", "Observation/k")),
    ],
)
def test_supported_sentences_pass(text, cited):
    assert verdict(text, *cited).ok, verdict(text, *cited).reason()


@pytest.mark.parametrize(
    ("text", "cited", "missing"),
    [
        ("Potassium was 7.9 mmol/L.", ("Observation/k",), "number 7.9 mmol/l"),  # planted number
        ("Potassium was 6.2 mg/dL.", ("Observation/k",), "number 6.2 mg/dl"),  # right number, wrong unit
        ("Potassium 6.2 mmol/L on 2025-01-03.", ("Observation/k",), "date 2025-01-03"),
        ("Potassium 6.2 mmol/L at 14:30.", ("Observation/k",), "time 14:30"),
        ("Started apixaban.", ("MedicationRequest/w",), "drug apixaban"),  # planted drug
        ("Warfarin 10 mg daily.", ("MedicationRequest/w",), "number 10 mg"),  # planted dose
        ("Potassium 139 mmol/L.", ("Observation/na",), "number 139 mmol/l"),  # another analyte's number
        ("Treated with opioids.", ("MedicationRequest/w",), "drug class opioids"),
        ("Potassium was high for three days.", ("Observation/k",), "number three"),
    ],
)
def test_unsupported_facts_fail_and_are_named(text, cited, missing):
    result = verdict(text, *cited)
    assert not result.ok
    assert missing in result.reason()


def test_a_fact_must_be_in_a_cited_resource_not_just_anywhere():
    # 139 is in the sodium result, but the sentence cites only potassium
    assert not verdict("Sodium 139 mmol/L.", "Observation/k").ok
    assert verdict("Sodium 139 mmol/L.", "Observation/na").ok


def test_uncited_sentence_fails():
    assert verdict("The patient is doing well.").uncited
    assert verdict("The patient is doing well.", "Observation/unknown").uncited


def test_model_prose_in_words_no_source_has_fails():
    result = verdict("Potassium levels indicate a rare hereditary syndrome.", "Observation/k", generated=True)
    assert not result.ok
    assert "words" in result.reason()
    # chart-built sentences are held to facts only
    assert verdict("Potassium levels indicate a rare hereditary syndrome.", "Observation/k").ok


def test_facts_blank_dates_before_reading_numbers():
    found = facts("Creatinine rose from 80 to 160 umol/L on 2025-01-03 (1,200 mL) [E2]")
    assert [(f.kind, f.value, f.unit) for f in found] == [
        ("date", "2025-01-03", ""),
        ("number", "80", ""),
        ("number", "160", "umol/l"),
        ("number", "1200", "ml"),
    ]


def test_attribution_names_markers_then_fact_holders():
    pool = [NA, K, WARFARIN]
    assert attribute("Potassium was 6.2 mmol/L [E3].", pool)[:2] == ("MedicationRequest/w", "Observation/k")
    assert attribute("Potassium was 6.2 mmol/L.", pool)[0] == "Observation/k"
    assert attribute("The weather was fine.", pool) == ()


def test_guard_removes_or_marks():
    sentences = [
        Sentence("Potassium 6.2 mmol/L.", ("Observation/k",)),
        Sentence("Potassium 9.9 mmol/L.", ("Observation/k",)),
    ]
    removed = guard(sentences, EVIDENCE, "remove")
    assert [s.text for s in removed.kept] == ["Potassium 6.2 mmol/L."]
    assert removed.checked == 2
    assert len(removed.failed) == 1
    marked = guard(sentences, EVIDENCE, "mark")
    assert marked.kept[1].text.startswith(
        "Potassium 9.9 mmol/L. [UNVERIFIED: not in the cited resources: number 9.9"
    )


def test_split_sentences_keeps_decimals_and_titles():
    assert split_sentences("Seen by Dr. Smith. K 6.2 mmol/L.\n- Home today.") == [
        "Seen by Dr. Smith.",
        "K 6.2 mmol/L.",
        "Home today.",
    ]
