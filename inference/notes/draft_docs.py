"""Drafts as the EHR receives them: a FHIR DocumentReference with its Provenance, an HL7 MDM.

Pure functions. The draft id is deterministic (patient, kind, anchor), so a redelivered trigger
or a replayed topic overwrites the same document (FHIR PUT, MSH-10 duplicate check) instead of
adding one. A new draft is ``docStatus preliminary`` (MDM^T02, TXA-17 ``IP``, OBX-11 ``P``); a
clinician's acceptance or edit makes it ``final`` with the clinician's text (MDM^T08, ``AU``);
a rejection marks it ``entered-in-error`` (MDM^T11).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal

from inference.notes.drafting import LOINC, TITLES, Draft, DraftKind
from kernel.events import DraftNote, DraftStatus, deterministic_id
from kernel.hl7v2.writer import components, escape, message, our_msh, segment, timestamp
from kernel.writeback import (
    CREATE_ACTIVITY,
    DEVICE_DISPLAY,
    ChartIdentifier,
    assembler_agent,
    patient_cx,
    patient_reference,
)

PROMPT_HASH_URL = "https://clinstream.example/fhir/StructureDefinition/prompt-sha256"
MODEL_URL = "https://clinstream.example/fhir/StructureDefinition/generator-model"
MdmEvent = Literal["T02", "T08", "T11"]


def draft_id(patient_id: str, kind: str, anchor: str) -> str:
    """The id of the draft of ``kind`` about ``anchor`` for one patient (DocumentReference id)."""
    return deterministic_id("DocumentReference", "clinstream-draft", patient_id, kind, anchor)


def note_attachment(text: str, kind: DraftKind, created: datetime) -> dict[str, Any]:
    """The note as a base64 ``text/markdown`` attachment."""
    return {
        "contentType": "text/markdown; charset=utf-8",
        "language": "en",
        "data": base64.b64encode(text.encode()).decode(),
        "title": TITLES[kind],
        "creation": created.isoformat(),
    }


def document_reference(
    doc_id: str,
    draft: Draft,
    text: str,
    patient: ChartIdentifier | None,
    *,
    status: DraftStatus = "preliminary",
    authenticator: str | None = None,
) -> dict[str, Any]:
    """The FHIR R4 DocumentReference of a draft: ``current`` + ``preliminary`` until reviewed."""
    code, display = LOINC[draft.kind]
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": doc_id,
        "masterIdentifier": {"system": "urn:clinstream:draft", "value": doc_id},
        "status": "entered-in-error" if status == "entered-in-error" else "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                        "code": "clinical-note",
                        "display": "Clinical Note",
                    }
                ]
            }
        ],
        "subject": patient_reference(draft.patient_id, patient),
        "date": draft.created.isoformat(),
        "author": [{"display": DEVICE_DISPLAY + (f" ({draft.model})" if draft.model else "")}],
        "description": f"{TITLES[draft.kind]} drafted by {DEVICE_DISPLAY}; not reviewed"
        if status == "preliminary"
        else f"{TITLES[draft.kind]} drafted by {DEVICE_DISPLAY}, reviewed by a clinician",
        "content": [{"attachment": note_attachment(text, draft.kind, draft.created)}],
    }
    if status != "entered-in-error":
        doc["docStatus"] = status
    if authenticator:
        doc["authenticator"] = {"display": authenticator}
    context: dict[str, Any] = {}
    if draft.anchor.startswith("Encounter/"):
        context["encounter"] = [{"reference": draft.anchor}]
    related = [{"reference": ref} for ref in draft.citations()]
    if related:
        context["related"] = related
    if context:
        doc["context"] = context
    return doc


def provenance(doc_id: str, draft: Draft) -> dict[str, Any]:
    """The Provenance of a draft: the model and its version, the prompt's hash, every source cited."""
    who = f"{DEVICE_DISPLAY}: {draft.model or 'chart data only'}"
    if draft.model_version:
        who += f" ({draft.model_version})"
    return {
        "resourceType": "Provenance",
        "id": deterministic_id("Provenance", "DocumentReference", doc_id),
        "extension": [
            {"url": PROMPT_HASH_URL, "valueString": draft.prompt_sha256},
            {"url": MODEL_URL, "valueString": f"{draft.model} {draft.model_version}".strip()},
        ],
        "target": [{"reference": f"DocumentReference/{doc_id}"}],
        "recorded": draft.created.isoformat(),
        "activity": CREATE_ACTIVITY,
        "agent": [assembler_agent(who)],
        "entity": [{"role": "source", "what": {"reference": ref}} for ref in draft.citations()],
    }


def mdm(
    doc: dict[str, Any],
    text: str,
    patient: ChartIdentifier | None,
    patient_id: str,
    event: MdmEvent,
    at: datetime,
    *,
    sending_application: str = "CLINSTREAM",
    receiving_application: str = "",
    receiving_facility: str = "",
) -> bytes:
    """HL7 v2.5.1 MDM (T02 new draft, T08 edited/accepted, T11 cancelled) with the note as OBX TX lines.

    TXA-12 is the draft id; TXA-17 ``IP`` (in progress) for a draft, ``AU`` once a clinician
    accepted it; OBX-11 ``P`` or ``F`` to match. MSH-10 changes with the event, so each step
    of a draft's review is its own message."""
    final = event == "T08"
    coding = doc["type"]["coding"][0]
    doc_type = components([coding["code"], coding["display"], "LN"])
    control = deterministic_id("MDM", doc["id"], event, at.isoformat())[:20]
    when = timestamp(at)
    segments = [
        our_msh(
            sending_application,
            receiving_application,
            receiving_facility,
            at=at,
            message_type=("MDM", event, "MDM_T02"),
            control_id=control,
        ),
        segment("EVN", [event, when]),
        segment("PID", ["1", "", patient_cx(patient_id, patient)]),
        segment("PV1", ["1", "U"]),
        segment(
            "TXA",
            [
                *("1", doc_type, "TX", when, "", when, "", "", "", "", ""),
                *(components([doc["id"], sending_application]), "", "", "", ""),
                *("AU" if final else "IP", "", "CA" if event == "T11" else ("AV" if final else "UN")),
            ],
        ),
    ]
    if event != "T11":
        status = "F" if final else "P"
        for n, line in enumerate(text.splitlines() or [""], 1):
            fields = [str(n), "TX", doc_type, "1", escape(line), "", "", "", "", "", status]
            segments.append(segment("OBX", fields))
    return message(segments)


def draft_event(
    doc_id: str,
    draft: Draft,
    doc: dict[str, Any],
    prov: dict[str, Any],
    *,
    status: DraftStatus,
    trace_id: str = "",
) -> DraftNote:
    """The record on `notes.drafts.v1` for a draft (or its reviewed version)."""
    return DraftNote(
        id=doc_id,
        patient_id=draft.patient_id,
        kind=draft.kind,
        anchor=draft.anchor,
        status=status,
        document=doc,
        provenance=prov,
        citations=draft.citations(),
        sentences=draft.guard.checked,
        removed=tuple(v.reason().split(":")[0] for v in draft.guard.failed),
        model=draft.model,
        generated_tokens=draft.generated_tokens,
        generation_s=round(draft.generation_s, 3),
        created=draft.created,
        trace_id=trace_id,
    )


def reviewed_document(
    doc: dict[str, Any], status: DraftStatus, text: str | None, reviewer: str | None
) -> dict[str, Any]:
    """``doc`` after a clinician's decision: ``final`` with their text (accept keeps the draft's),
    or ``entered-in-error`` (rejected)."""
    out = {**doc, "content": [dict(c) for c in doc["content"]]}
    if status == "entered-in-error":
        out["status"] = "entered-in-error"
        out.pop("docStatus", None)
        return out
    out["status"], out["docStatus"] = "current", status
    if text is not None:
        attachment = dict(out["content"][0]["attachment"])
        attachment["data"] = base64.b64encode(text.encode()).decode()
        out["content"][0] = {"attachment": attachment}
    if reviewer:
        out["authenticator"] = {"display": reviewer}
    out["description"] = str(doc.get("description", "")).replace("not reviewed", "reviewed by a clinician")
    return out


def note_text(doc: dict[str, Any]) -> str:
    """The note text of a draft DocumentReference."""
    return base64.b64decode(doc["content"][0]["attachment"]["data"]).decode()
