"""Safety signals in notes: ConText negation, experiencer, history, uncertainty; real MDM notes."""

import re
from dataclasses import replace
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from inference.cds import note_signals
from inference.cds.rules import process, ruleset_from
from kernel.errors import ModelRunError
from kernel.settings import CdsSettings
from stream.convert import convert_text
from tests.conftest import corpora_dir
from tests.unit.inference.cds.fixtures import T0, note, record

RULES = ruleset_from(CdsSettings())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient denies chest pain.", []),
        ("Denies fever, chills, nausea, vomiting, chest pain.", []),  # one negation covers the list
        ("Chest pain was ruled out.", []),
        ("Denies fever but reports chest pain.", [("chest-pain", "warning")]),
        ("Reports chest pain radiating to the left arm.", [("chest-pain", "warning")]),
        ("No suicidal ideation.", []),
        ("She is not suicidal.", []),
        ("Endorses suicidal ideation with a plan.", [("suicidal-ideation", "critical")]),
        ("Patient fell at home this morning.", [("fall", "warning")]),
        ("Found on the floor by staff at 03:00.", [("fall", "warning")]),
        ("Fall risk assessment completed; fall precautions in place.", []),
        ("History of falls.", []),
        ("Mother had anaphylaxis to peanuts.", []),
        ("Possible allergic reaction to ceftriaxone.", [("allergic-reaction", "info")]),
        ("No chest pain, no dyspnoea, reports a fall yesterday.", [("fall", "warning")]),
    ],
)
def test_context_decides_what_a_note_asserts(text, expected):
    outcome = process(None, record(note(text)), RULES, now=T0)
    assert sorted((a.key.split("/")[1], a.severity) for a in outcome.alerts) == expected


def test_a_signal_cites_the_sentence_and_the_note():
    text = "Vitals stable. Patient fell in the bathroom overnight, no head strike. Plan: PT review."
    [alert] = process(None, record(note(text, "n7")), RULES, now=T0).alerts
    assert alert.evidence == ("DocumentReference/n7",)
    assert alert.inputs[0].value == "Patient fell in the bathroom overnight, no head strike."
    assert alert.summary.startswith("Note reports a fall: “Patient fell")
    assert len(alert.summary) <= 140
    assert "ConText" in alert.citation


def test_the_same_note_again_raises_nothing_more():
    first = process(None, record(note("Endorses suicidal ideation.")), RULES, now=T0)
    again = process(first.state, record(note("Endorses suicidal ideation.")), RULES, now=T0)
    assert (len(first.alerts), again.alerts) == (1, [])


def test_unreadable_or_non_text_attachments_are_skipped():
    pdf = note("x", content=[{"attachment": {"contentType": "application/pdf", "data": "JVBERi0="}}])
    broken = note("x", content=[{"attachment": {"contentType": "text/plain", "data": "%%%"}}])
    erased = note("Patient fell.", status="entered-in-error")
    outcome = process(None, record(pdf, broken, erased), RULES, now=T0)
    assert outcome.alerts == []


def test_real_mdm_notes_from_the_corpus_are_read_without_error():
    texts = [
        p.read_text(encoding="utf-8", errors="replace")
        for p in sorted((corpora_dir() / "hl7v2").rglob("MDM*"))
    ]
    read = 0
    for text in texts:
        for converted in convert_text(text, tz=ZoneInfo("UTC")):
            resources = (converted.bundle and [e["resource"] for e in converted.bundle["entry"]]) or []
            for res in resources:
                if res["resourceType"] == "DocumentReference" and note_signals.note_text(res):
                    read += 1
                    note_signals.evaluate([res], default_time=T0)  # must not raise
    assert read >= 3


class KeywordEncoder:
    """A stand-in for the embedding model: one axis per word it knows (counted), unit vectors."""

    name = "keywords"
    AXES = ("floor", "die", "walker")

    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        rows = []
        for text in texts:
            words = re.findall(r"[a-z]+", text.lower())
            counts = [float(words.count(word)) for word in self.AXES]
            row = np.array([*counts, 0.0 if any(counts) else 1.0])  # last axis: none of its words
            rows.append(row / np.linalg.norm(row))
        return np.array(rows, dtype=np.float32)


EXAMPLES = {
    "fall": ("found on the floor",),
    "suicidal-ideation": ("wants to die",),
    note_signals.NOT_A_SIGNAL: ("uses a walker",),
}


def matched(text, **kw):
    matcher = note_signals.NoteMatcher(KeywordEncoder(), examples=EXAMPLES, **kw)
    rules = replace(RULES, note_matcher=matcher)
    return sorted(
        (a.key.split("/")[1], a.severity) for a in process(None, record(note(text)), rules, now=T0).alerts
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # close to an example, and no phrase of the signal: raised one severity lower
        ("Nurse saw him on the floor beside the commode.", [("fall", "info")]),
        ("He said he would rather die.", [("suicidal-ideation", "warning")]),
        # ConText over the whole sentence: any negation, history or other person takes it back
        ("Was on the floor, no head strike.", []),
        ("Denies any wish to die.", []),
        ("History of being on the floor overnight.", []),
        ("His mother was on the floor.", []),
        # closest to what is not a signal, or not close enough
        ("Walker by the bed, walker in the hall, cleaned the floor.", []),
        ("Tolerating diet.", []),
    ],
)
def test_the_embedding_model_finds_signals_the_phrases_miss(text, expected):
    assert matched(text) == expected


def test_a_phrase_outranks_the_embedding_model_and_is_not_raised_twice():
    # "fell" is a fall phrase and the sentence is close to the fall example too
    assert matched("Patient fell and was on the floor.") == [("fall", "warning")]


def test_an_uncertain_sentence_found_by_the_model_is_info():
    assert matched("Possibly wants to die.") == [("suicidal-ideation", "info")]


def test_the_card_names_the_example_and_the_cosine():
    matcher = note_signals.NoteMatcher(KeywordEncoder(), examples=EXAMPLES)
    [finding] = note_signals.evaluate([note("Lying on the floor at 3am.")], default_time=T0, matcher=matcher)
    assert finding.summary.startswith("Note may describe a fall: “Lying on the floor")
    assert "closest to the example “found on the floor”" in finding.detail
    assert "keywords" in finding.detail
    assert "cosine 1.00" in finding.detail
    assert finding.thresholds.startswith("cosine ≥ 0.50")


def test_the_threshold_decides():
    text = "On the floor, floor tiles wet, said he could die."  # cosine 2/sqrt(5) = 0.894 to the fall example
    assert matched(text, min_cosine=0.85) == [("fall", "info")]
    assert matched(text, min_cosine=0.9) == []


def test_one_model_call_per_note_and_none_without_notes():
    encoder = KeywordEncoder()
    matcher = note_signals.NoteMatcher(encoder, examples=EXAMPLES)
    assert encoder.calls == 1  # the examples, once
    note_signals.evaluate([note("One. Two. Three on the floor.")], default_time=T0, matcher=matcher)
    note_signals.evaluate([{"resourceType": "Observation", "id": "o"}], default_time=T0, matcher=matcher)
    assert encoder.calls == 2


def test_a_failing_model_is_a_model_error_not_the_notes_fault():
    class Broken(KeywordEncoder):
        def embed(self, texts):
            if self.calls:
                raise RuntimeError("session lost")
            return super().embed(texts)

    matcher = note_signals.NoteMatcher(Broken(), examples=EXAMPLES)
    with pytest.raises(ModelRunError, match="note embedding failed: RuntimeError"):
        note_signals.evaluate([note("On the floor.")], default_time=T0, matcher=matcher)


def test_examples_must_name_known_signals():
    with pytest.raises(ValueError, match="unknown signals"):
        note_signals.NoteMatcher(KeywordEncoder(), examples={"headache": ("x",)})
