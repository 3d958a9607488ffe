"""Safety signals in notes: ConText negation, experiencer, history, uncertainty; real MDM notes."""

import base64
from zoneinfo import ZoneInfo

import pytest

from inference import notes
from inference.rules import process, ruleset_from
from stream.convert import convert_text
from stream.settings import CdsSettings
from tests.conftest import corpora_dir
from tests.unit.cds_helpers import T0, record

RULES = ruleset_from(CdsSettings())


def note(text, nid="n1", **extra):
    data = base64.b64encode(text.encode()).decode()
    return {
        "resourceType": "DocumentReference",
        "id": nid,
        "status": "current",
        "date": T0.isoformat(),
        "content": [{"attachment": {"contentType": "text/plain", "data": data}}],
        **extra,
    }


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
                if res["resourceType"] == "DocumentReference" and notes.note_text(res):
                    read += 1
                    notes.evaluate([res], default_time=T0)  # must not raise
    assert read >= 3
