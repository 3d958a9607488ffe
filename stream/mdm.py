"""MDM^T01-T11 (TXA + OBX) → DocumentReference with the note as an attachment.

Pure functions. The document id comes from TXA-12 (unique document number), so an
addendum or a replacement (T03-T10) of the same document overwrites it and a cancel
(T11) marks it ``entered-in-error``. Text OBX (TX, FT, ST, CE/CWE) become one
``text/plain`` attachment; encapsulated data (ED with Base64) stays as sent.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from kernel.attachments import text_attachment
from kernel.errors import Hl7Error, MappingError
from kernel.events import deterministic_id
from kernel.hl7v2.datatypes import concept_at, ed_attachment, where
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import Message, component_of
from kernel.quality import MALFORMED_VALUE, tolerate

# TXA-17 document completion status (HL7 table 0271) → docStatus.
_DOC_STATUS = {
    "AU": "final",
    "LA": "final",
    "DO": "preliminary",
    "DI": "preliminary",
    "IP": "preliminary",
    "IN": "preliminary",
    "PA": "preliminary",
}
_TEXT_TYPES = {"TX", "FT", "ST", "CE", "CWE"}


def map_document(msg: Message, patient_id: str, encounter_id: str | None, tz: ZoneInfo) -> dict[str, Any]:
    """The DocumentReference of an MDM message.

    Raises:
        MappingError: no TXA segment, or an ED attachment whose Base64 is corrupt.
    """
    txa = msg.first("TXA")
    if txa is None:
        raise MappingError("TXA segment is missing", code=100, segment="TXA", control_id=msg.control_id)
    number = txa.value(12) or txa.value(13)
    doc_id = (
        deterministic_id("DocumentReference", txa.value(12, 2) or msg.msh.value(4), number)
        if number
        else deterministic_id("DocumentReference", msg.sending_system, msg.control_id)
    )
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": doc_id,
        "status": "entered-in-error" if msg.trigger_event == "T11" else "current",
        "subject": {"reference": f"Patient/{patient_id}"},
        "content": _attachments(msg, tz),
    }
    doc_status = _DOC_STATUS.get(txa.value(17).upper())
    if doc_status:
        resource["docStatus"] = doc_status
    concept = concept_at(txa, 2, msg)
    if concept:
        resource["type"] = concept
    if number:
        resource["masterIdentifier"] = {"value": number}
    context: dict[str, Any] = {}
    if encounter_id:
        context["encounter"] = [{"reference": f"Encounter/{encounter_id}"}]
    activity = to_fhir_datetime(txa.value(4), tz, segment="TXA", field=4)
    if activity:
        context["period"] = {"start": activity}
    if context:
        resource["context"] = context
    creation = to_fhir_datetime(txa.value(6) or txa.value(4), tz, segment="TXA", field=6)
    if creation:
        for content in resource["content"]:
            content["attachment"]["creation"] = creation
    return resource


def _attachments(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    lines: list[str] = []
    out: list[dict[str, Any]] = []
    for obx in msg.all("OBX"):
        value_type = obx.value(2).upper()
        if value_type in _TEXT_TYPES:
            for rep in obx.repetitions(5):
                if value_type in ("CE", "CWE"):
                    lines.append(component_of(rep, msg.seps, 2) or component_of(rep, msg.seps, 1))
                else:
                    lines.append(component_of(rep, msg.seps, 1))
        elif value_type == "ED":
            reps = obx.repetitions(5)
            try:
                attachment = ed_attachment(reps[0], msg) if reps else None
            except Hl7Error as exc:  # the rest of the document still converts
                tolerate(exc, MALFORMED_VALUE, location=where(obx, msg, 5))
                attachment = None
            if attachment is not None:
                out.append({"attachment": attachment})
    if lines:
        text = "\n".join(lines).strip("\n")
        out.insert(0, {"attachment": text_attachment(text)})
    if not out:
        # DocumentReference needs content; say that none came rather than inventing any.
        out.append({"attachment": {"contentType": "text/plain", "title": "no content in the message"}})
    return out
