"""Every resource the normalizer makes from the third-party corpus renders to clinical text
that invents nothing and leaves identifiers out; notes split at their headings."""

import base64
import json
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from indexer.chunking import OVERLAP_WORDS, WINDOW_WORDS, plan_record, resource_chunks, windows
from kernel.events import Envelope, FhirRecord
from kernel.hl7v2.parser import decode_payload
from kernel.rendering import attachment_text, note_sections, render
from stream.convert import convert_text
from tests.conftest import hl7_corpus_files

NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _corpus_resources():
    out = []
    for path in hl7_corpus_files():
        for item in convert_text(decode_payload(path.read_bytes()), tz=ZoneInfo("UTC")):
            if item.bundle is not None:
                out.extend(e["resource"] for e in item.bundle["entry"])
    return out


RESOURCES = _corpus_resources()


def _source_text(resource):
    """Everything a rendering may quote: the JSON and any decoded text attachment."""
    texts = [json.dumps(resource, ensure_ascii=False)]
    for content in resource.get("content", []):
        texts.append(attachment_text(content.get("attachment") or {}))
    for form in resource.get("presentedForm", []):
        texts.append(attachment_text(form))
    return "\n".join(texts)


def test_every_resource_type_the_normalizer_makes_is_rendered():
    kinds = {r["resourceType"] for r in RESOURCES}
    assert len(kinds) >= 15
    silent = {r["resourceType"] for r in RESOURCES if r["resourceType"] != "Patient" and not render(r)}
    assert silent == set()


def test_no_number_in_a_rendering_is_missing_from_its_resource():
    checked = 0
    for resource in RESOURCES:
        source = _source_text(resource)
        for chunk in resource_chunks(resource, "p"):
            for token in NUMBER.findall(chunk.text):
                assert token in source, (resource["resourceType"], token, chunk.text[:200])
                checked += 1
    assert checked > 5000


def test_identifiers_stay_out_of_the_index():
    leaked = []
    for resource in RESOURCES:
        values = [str(i.get("value", "")) for i in resource.get("identifier", [])]
        values += [str(resource.get("subscriberId", ""))]
        text = " ".join(c.text for c in resource_chunks(resource, "p"))
        leaked += [v for v in values if len(v) >= 5 and v in text]
    assert leaked == []


def test_renderings_read_like_the_chart():
    texts = {r["resourceType"]: render(r)[0][1] for r in RESOURCES if render(r)}
    assert texts["Condition"].startswith("Problem: ")
    assert texts["AllergyIntolerance"].startswith("Allergy: ")
    assert texts["MedicationRequest"].startswith("Medication order: ")
    assert texts["Immunization"].startswith("Immunization: ")
    assert texts["Encounter"].startswith("Encounter: ")


def test_a_note_is_split_at_its_headings_and_long_sections_overlap():
    body = " ".join(f"w{i}" for i in range(400))
    note = (
        f"Discharge summary\nHISTORY OF PRESENT ILLNESS:\n67 yo, chest pain.\nBP: 120/80\n## Plan\n{body}\n"
    )
    assert [h for h, _ in note_sections(note)] == ["", "HISTORY OF PRESENT ILLNESS", "Plan"]
    parts = windows(body)
    assert len(parts) == 3
    assert all(len(p.split()) <= WINDOW_WORDS for p in parts)
    assert parts[0].split()[-OVERLAP_WORDS:] == parts[1].split()[:OVERLAP_WORDS]
    assert parts[-1].split()[-1] == "w399"


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _note(text, status="current"):
    return {
        "resourceType": "DocumentReference",
        "id": "d1",
        "status": status,
        "type": {"text": "Discharge summary"},
        "date": "2025-01-03T10:00:00+00:00",
        "context": {"encounter": [{"reference": "Encounter/e1"}]},
        "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}
        ],
    }


def test_note_chunks_cite_section_encounter_and_version():

    envelope = Envelope(
        source_system="A^B",
        source_message_id="M7",
        content_hash="h",
        received_at=datetime.now(UTC),
        trace_id="t",
    )
    long = _note("HPI:\nchest pain\nPLAN:\n" + " ".join(f"w{i}" for i in range(300)))
    plan = plan_record(FhirRecord(envelope=envelope, patient_id="p", resources=[long]))
    assert [c.section for c in plan.upserts] == ["", "HPI", "PLAN", "PLAN"]
    assert [c.chunk_no for c in plan.upserts] == [0, 1, 2, 3]
    assert {c.encounter for c in plan.upserts} == {"Encounter/e1"}
    assert {c.version for c in plan.upserts} == {"M7"}
    assert plan.upserts[1].text.startswith("Note: Discharge summary 2025-01-03 10:00 - HPI: chest pain")
    short = plan_record(FhirRecord(envelope=envelope, patient_id="p", resources=[_note("HPI:\nbetter")]))
    assert short.keep == {"DocumentReference/d1": 2}  # chunks 2 and 3 of the longer version go
    gone = plan_record(
        FhirRecord(envelope=envelope, patient_id="p", resources=[_note("x", "entered-in-error")])
    )
    assert (gone.upserts, gone.keep) == ([], {"DocumentReference/d1": 0})


@pytest.mark.parametrize(
    ("attachment", "expected"),
    [
        ({"contentType": "text/plain", "data": base64.b64encode(b"hello").decode()}, "hello"),
        ({"contentType": "application/pdf", "data": base64.b64encode(b"%PDF").decode()}, ""),
        ({"contentType": "text/plain", "data": "not base64!"}, ""),
        ({"contentType": "text/html", "data": base64.b64encode(b"<p>a</p>").decode()}, " a "),
    ],
)
def test_only_text_attachments_are_read(attachment, expected):
    assert attachment_text(attachment) == expected
