"""Drafts from a chart: structured sections, the generator's sentences through the guard, triggers,
and the DocumentReference / Provenance / MDM that carry a draft to the EHR."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from inference.cds.state import ChartIdentifier
from inference.notes.draft_docs import (
    document_reference,
    draft_id,
    mdm,
    note_text,
    provenance,
    reviewed_document,
)
from inference.notes.drafting import plan, render_markdown, triggers, write_draft
from kernel.chart import Chart, apply
from kernel.fhir_models import model_class
from kernel.generation import Generation
from stream.normalize import normalize_hl7

NOW = datetime(2025, 3, 6, 12, 0, tzinfo=UTC)
ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "period": {"start": "2025-03-01T08:00:00+00:00", "end": "2025-03-06T10:00:00+00:00"},
    "reasonCode": [{"text": "Community-acquired pneumonia"}],
}
LAB = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]
}


def creatinine(oid, value, when, flag=None):
    obs = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [LAB],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}], "text": "Creatinine"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "umol/L"},
    }
    if flag:
        obs["interpretation"] = [{"coding": [{"code": flag}]}]
    return obs


CHART = apply(
    Chart("p1"),
    [
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "100002", "system": "urn:mercy"}],
        },
        ENCOUNTER,
        {
            "resourceType": "Condition",
            "id": "c1",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"text": "Community-acquired pneumonia"},
            "onsetDateTime": "2025-03-01",
        },
        {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "Amoxicillin 500 MG Oral Capsule"},
            "authoredOn": "2025-03-02T09:00:00+00:00",
            "dosageInstruction": [{"text": "500 mg three times daily"}],
        },
        {
            "resourceType": "MedicationRequest",
            "id": "m2",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "Lisinopril 10 MG Oral Tablet"},
            "authoredOn": "2024-01-01T09:00:00+00:00",
        },
        creatinine("o1", 80, "2025-02-01T08:00:00+00:00"),
        creatinine("o2", 160, "2025-03-03T08:00:00+00:00", "H"),
    ],
)


class CannedGenerator:
    """Answers each prompt with the next canned text; keeps the prompts."""

    name, version = "canned", "1"

    def __init__(self, answers):
        self.answers = list(answers)
        self.prompts = []

    def render(self, messages):
        return "\n".join(m["content"] for m in messages)

    def chat(self, messages, config):
        self.prompts.append(messages)
        text = self.answers.pop(0) if self.answers else ""
        return Generation(text, [1] * 5, 10, "eos", 0.01, 0.02)


def test_structured_sections_cite_their_resources_and_copy_numbers():
    p = plan(CHART, "discharge-summary", "Encounter/e1", NOW)
    sections = {title: lines for title, lines, _ in p.sections}
    assert [s.text for s in sections["Encounter"]] == [
        "IMP: admitted 2025-03-01, discharged 2025-03-06; reason: Community-acquired pneumonia."
    ]
    assert [s.text for s in sections["Medications"]] == [
        "Amoxicillin 500 MG Oral Capsule: 500 mg three times daily (new, ordered 2025-03-02).",
        "Lisinopril 10 MG Oral Tablet (continued).",
    ]
    (lab,) = sections["Key results"]
    assert lab.text == (
        "Creatinine 160 umol/L on 2025-03-03 (abnormal; previous 80 umol/L on 2025-02-01, rising)."
    )
    assert lab.citations == ("Observation/o2", "Observation/o1")
    draft = write_draft(p, None, now=NOW)
    assert not draft.guard.failed  # every chart-built sentence passes the guard


def test_generated_sentences_with_planted_numbers_or_drugs_are_removed():
    answers = [
        "The patient was admitted on 2025-03-01 with Community-acquired pneumonia.",  # encounter: true
        "Amoxicillin 500 mg was started on 2025-03-02.",  # true
        "Creatinine rose to 210 umol/L on 2025-03-03.",  # planted number
        "Creatinine 160 umol/L, abnormal, rising. Creatinine rising after warfarin.",  # true; planted drug
    ]
    generator = CannedGenerator(answers)
    p = plan(CHART, "discharge-summary", "Encounter/e1", NOW)
    draft = write_draft(p, generator, now=NOW)
    shown = {title: [s.text for s in lines] for title, lines, _ in draft.sections}
    assert shown["Hospital course"] == [
        "The patient was admitted on 2025-03-01 with Community-acquired pneumonia.",
        "Amoxicillin 500 mg was started on 2025-03-02.",
    ]
    assert shown["Assessment"] == ["Creatinine 160 umol/L, abnormal, rising."]
    reasons = sorted(v.reason() for v in draft.guard.failed)
    assert len(reasons) == 2
    assert reasons[0].startswith("not in the cited resources: drug warfarin")
    assert reasons[1].startswith("not in the cited resources: number 210 umol/l")
    text = render_markdown(draft, p.evidence)
    assert "210" not in text
    assert "Warfarin" not in text
    assert "removed (2)" in text
    # every sentence carries citations, and the source list names each cited resource
    assert all(s.citations for _, lines, _ in draft.sections for s in lines)
    assert all(f"{ref}:" in text for ref in draft.citations())
    # the course retold the encounter, the new order and the abnormal result, not the continued one
    assert len(generator.prompts) == 4
    assert "Lisinopril" not in str(generator.prompts[:3])


def test_mark_mode_keeps_failed_sentences_visibly():
    generator = CannedGenerator(["x", "y", "Creatinine rose to 210 umol/L on 2025-03-03."])
    draft = write_draft(
        plan(CHART, "discharge-summary", "Encounter/e1", NOW), generator, now=NOW, mode="mark"
    )
    course = [s.text for title, lines, _ in draft.sections if title == "Hospital course" for s in lines]
    assert any("210 umol/L" in t and "[UNVERIFIED" in t for t in course)


def test_triggers_fire_once_per_discharge_and_per_abnormal_report():
    admitted = apply(Chart("p1"), [{**ENCOUNTER, "status": "in-progress"}])
    assert triggers(admitted, [ENCOUNTER]) == [("discharge-summary", "Encounter/e1")]
    assert triggers(apply(admitted, [ENCOUNTER]), [ENCOUNTER]) == []  # replay: nothing new
    outpatient = {**ENCOUNTER, "id": "e2", "class": {"code": "AMB"}}
    assert triggers(Chart("p1"), [outpatient]) == []
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": {"text": "Renal panel"},
        "result": [{"reference": "Observation/o2"}],
    }
    assert triggers(Chart("p1"), [report, creatinine("o2", 160, "2025-03-03T08:00:00+00:00", "H")]) == [
        ("lab-interpretation", "DiagnosticReport/r1")
    ]
    assert triggers(Chart("p1"), [report, creatinine("o2", 90, "2025-03-03T08:00:00+00:00")]) == []


def test_documents_are_valid_r4_and_the_mdm_reads_back_as_a_preliminary_document():
    p = plan(CHART, "discharge-summary", "Encounter/e1", NOW)
    draft = write_draft(p, CannedGenerator([]), now=NOW)
    text = render_markdown(draft, p.evidence)
    doc_id = draft_id("p1", "discharge-summary", "Encounter/e1")
    patient = ChartIdentifier(value="100002", system="urn:mercy", authority="MERCY")
    doc = document_reference(doc_id, draft, text, patient)
    prov = provenance(doc_id, draft)
    model_class("DocumentReference").model_validate(doc)
    model_class("Provenance").model_validate(prov)
    assert (doc["status"], doc["docStatus"]) == ("current", "preliminary")
    assert note_text(doc) == text
    assert {r["reference"] for r in doc["context"]["related"]} == set(draft.citations())
    assert prov["extension"][0]["valueString"] == draft.prompt_sha256
    assert draft_id("p1", "discharge-summary", "Encounter/e1") == doc_id  # deterministic

    message = mdm(doc, text, patient, "p1", "T02", NOW).decode()
    assert "MDM^T02" in message
    assert "|IP|" in message
    normalized = normalize_hl7(message, tz=ZoneInfo("UTC"))
    (back,) = [r for r in normalized.resources if r["resourceType"] == "DocumentReference"]
    assert back["docStatus"] == "preliminary"
    assert "Creatinine 160 umol/L" in note_text(back)

    final = reviewed_document(doc, "final", "Edited text.", "Dr. Grey")
    model_class("DocumentReference").model_validate(final)
    assert (final["docStatus"], note_text(final), final["authenticator"]["display"]) == (
        "final",
        "Edited text.",
        "Dr. Grey",
    )
    rejected = reviewed_document(doc, "entered-in-error", None, "Dr. Grey")
    assert rejected["status"] == "entered-in-error"
    assert "docStatus" not in rejected
    cancel = mdm(rejected, "", patient, "p1", "T11", NOW).decode()
    assert "MDM^T11" in cancel
    assert "OBX" not in cancel


def test_trigger_refs_name_the_record_and_its_reports_results():
    from inference.notes.drafting import trigger_refs

    report = {"resourceType": "DiagnosticReport", "id": "r", "result": [{"reference": "Observation/a"}, {}]}
    encounter = {"resourceType": "Encounter", "id": "e"}
    assert trigger_refs([report, encounter, {"resourceType": "Patient"}]) == {
        "DiagnosticReport/r",
        "Encounter/e",
        "Observation/a",
    }
