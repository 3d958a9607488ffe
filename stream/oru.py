"""OBX → Observation for results messages (ORU^R01).

Pure functions. Each OBX becomes one Observation whose id is derived from the order
(filler/placer number), the observation code and sub-id, so a corrected result (OBX-11
``C``) overwrites the preliminary one instead of adding a second.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from kernel.attachments import text_attachment
from kernel.errors import UnsupportedMessageError
from kernel.events import deterministic_id
from kernel.hl7v2.datatypes import (
    codeable_concept,
    concept_at,
    ed_attachment,
    field_error,
    field_number,
    json_number,
    notes_after,
    required_concept,
    rp_attachment,
    unit_of,
)
from kernel.hl7v2.parser import Message, Segment, component_of, to_fhir_datetime

V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# OBX-11 observation result status (HL7 table 0085) → Observation.status.
_STATUS = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "X": "cancelled",
    "W": "entered-in-error",
    "D": "entered-in-error",
    "U": "final",
}
_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*$")
_NUMERIC_TYPES = {"NM"}
_TEXT_TYPES = {"ST", "TX", "FT"}
_CODED_TYPES = {"CE", "CWE", "CNE"}
_DATE_TYPES = {"DT", "DTM", "TS"}
_DOCUMENT_TYPES = {"ED", "RP"}




















def map_observations(
    msg: Message,
    patient_id: str,
    encounter_id: str | None,
    tz: ZoneInfo,
    *,
    category: str | None = "laboratory",
    narrative: bool = False,
) -> list[dict[str, Any]]:
    """Every OBX of the message as an Observation, in message order.

    ``category`` is the observation-category code (laboratory for results messages; None
    for the OBX of ADT messages, which may be vitals, height, weight or answers). ED and RP
    values become DocumentReferences. With ``narrative``, uncoded text lines (see
    `is_narrative`) are left to the report; otherwise they fail as a missing OBX-3.
    """
    out: list[dict[str, Any]] = []
    obr: Segment | None = None
    seen: dict[tuple[str, str, str], int] = {}
    for seg in msg.segments:
        if seg.name == "OBR":
            obr = seg
        elif seg.name == "OBX":
            if (narrative and obr is not None and is_narrative(seg, msg)) or _is_blank(seg, msg):
                continue
            order = _order_number(obr, msg)
            code_key = seg.value(3, 1) or seg.value(3, 2)
            sub = seg.value(4)
            occurrence = seen.get((order, code_key, sub), 0)
            seen[(order, code_key, sub)] = occurrence + 1
            parts = (msg.msh.value(4), order, code_key, sub, str(occurrence))
            if seg.value(2).upper() in _DOCUMENT_TYPES and _document_data(seg, msg):
                doc_id = deterministic_id("DocumentReference", *parts)
                out.append(_document(seg, obr, msg, doc_id, patient_id, encounter_id, tz))
                continue
            obs_id = deterministic_id("Observation", *parts)
            out.append(_observation(seg, obr, msg, obs_id, patient_id, encounter_id, tz, category))
    return out


def _document_data(obx: Segment, msg: Message) -> str:
    """The data (ED-5) or pointer (RP-1) of a document-valued OBX; empty when none was sent."""
    reps = obx.repetitions(5)
    if not reps:
        return ""
    return component_of(reps[0], msg.seps, 5 if obx.value(2).upper() == "ED" else 1)


def _is_blank(obx: Segment, msg: Message) -> bool:
    """An OBX with neither an identifier nor a value: nothing in it can be mapped.

    Senders emit these as placeholders (``OBX||ED|||App^NS^Octet-stream^Base64``); they are
    skipped and show up in the unmapped-content report instead of failing the message.
    """
    if obx.get(3).strip(msg.seps.component):
        return False
    if obx.value(2).upper() in _DOCUMENT_TYPES:
        return not _document_data(obx, msg)
    return not any(r.strip(msg.seps.component) for r in obx.repetitions(5))


def is_narrative(obx: Segment, msg: Message) -> bool:
    """An OBX without an identifier (OBX-3) whose value is a line of report text.

    Radiology and transcription feeds send the report body this way, one line per OBX;
    results messages keep such lines as the report's text (DiagnosticReport.presentedForm)
    rather than inventing an observation code for them.
    """
    return not obx.get(3).strip(msg.seps.component) and obx.value(2).upper() in _TEXT_TYPES






def _document(
    obx: Segment,
    obr: Segment | None,
    msg: Message,
    doc_id: str,
    patient_id: str,
    encounter_id: str | None,
    tz: ZoneInfo,
) -> dict[str, Any]:
    """An ED (encapsulated data) or RP (reference pointer) OBX as a DocumentReference.

    FHIR R4 Observation has no attachment value, so the image or file becomes a document of
    the patient, typed by OBX-3 and linked from the report's presentedForm.
    """
    reps = obx.repetitions(5)
    to_attachment = ed_attachment if obx.value(2).upper() == "ED" else rp_attachment
    attachment = to_attachment(reps[0], msg) if reps else None
    if attachment is None:
        raise field_error(f"OBX-5 {obx.value(2).upper()} value is empty", msg, "OBX", 5, code=101)
    concept = concept_at(obx, 3, msg)
    when = to_fhir_datetime(obx.value(14), tz, segment="OBX", field=14)
    if when is None and obr is not None:
        when = to_fhir_datetime(obr.value(7), tz, segment="OBR", field=7)
    if when:
        attachment["creation"] = when
    if concept and concept.get("text"):
        attachment["title"] = concept["text"]
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": doc_id,
        "status": "entered-in-error" if obx.value(11).upper() in ("W", "D") else "current",
        "subject": {"reference": f"Patient/{patient_id}"},
        "content": [{"attachment": attachment}],
    }
    if concept:
        resource["type"] = concept
    if encounter_id:
        resource["context"] = {"encounter": [{"reference": f"Encounter/{encounter_id}"}]}
    return resource


def _order_number(obr: Segment | None, msg: Message) -> str:
    if obr is not None:
        number = obr.value(3) or obr.value(2)
        if number:
            return number
    return msg.control_id


def _observation(
    obx: Segment,
    obr: Segment | None,
    msg: Message,
    obs_id: str,
    patient_id: str,
    encounter_id: str | None,
    tz: ZoneInfo,
    category: str | None,
) -> dict[str, Any]:
    concept = required_concept(obx, 3, msg, "observation identifier")
    # OBX-11 is required; when a sender leaves it empty the result is not claimed final.
    status = _STATUS.get(obx.value(11).upper(), "unknown")
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "status": status,
        "code": concept,
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if category:
        resource["category"] = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}]
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    effective = to_fhir_datetime(obx.value(14), tz, segment="OBX", field=14)
    if effective is None and obr is not None:
        effective = to_fhir_datetime(obr.value(7), tz, segment="OBR", field=7)
    if effective:
        resource["effectiveDateTime"] = effective
    unit = _unit(obx, msg)
    resource.update(_value(obx, msg, unit, tz))
    ref_range = _reference_range(obx.value(7), unit)
    if ref_range:
        resource["referenceRange"] = [ref_range]
    notes = notes_after(msg, obx)
    if notes:
        resource["note"] = notes
    flags = [f for f in obx.repetitions(8) if f]
    if flags:
        resource["interpretation"] = [
            {"coding": [{"system": V3_INTERPRETATION, "code": component_of(f, msg.seps, 1).upper()}]}
            for f in flags
        ]
    return resource


def _unit(obx: Segment, msg: Message) -> dict[str, Any]:
    raw = obx.repetitions(6)
    return unit_of(raw[0], msg) if raw else {}






def _decimal(text: str, obx: Segment, msg: Message) -> int | float:
    return field_number(text, obx, 5, msg, why="is not a number although OBX-2 is NM")






def _value(obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    value_type = obx.value(2).upper()
    reps = obx.repetitions(5)
    if not reps or not any(reps):
        return {}
    if value_type in _NUMERIC_TYPES:
        return {"valueQuantity": {"value": _decimal(component_of(reps[0], msg.seps, 1), obx, msg), **unit}}
    if value_type == "SN":
        comparator = component_of(reps[0], msg.seps, 1)
        number = component_of(reps[0], msg.seps, 2)
        if comparator in ("", "=", "<", ">", "<=", ">=") and not component_of(reps[0], msg.seps, 3):
            quantity: dict[str, Any] = {"value": _decimal(number, obx, msg), **unit}
            if comparator not in ("", "="):
                quantity["comparator"] = comparator
            return {"valueQuantity": quantity}
        separator = component_of(reps[0], msg.seps, 3)
        second = component_of(reps[0], msg.seps, 4)
        if comparator in ("", "=") and separator == "-" and second:
            return {
                "valueRange": {
                    "low": {"value": _decimal(number, obx, msg), **unit},
                    "high": {"value": _decimal(second, obx, msg), **unit},
                }
            }
        if comparator in ("", "=") and separator in (":", "/") and second:
            return {
                "valueRatio": {
                    "numerator": {"value": _decimal(number, obx, msg)},
                    "denominator": {"value": _decimal(second, obx, msg)},
                }
            }
        raise field_error(
            "OBX-5 structured numeric with this comparator/separator is not mapped",
            msg,
            "OBX",
            5,
            kind=UnsupportedMessageError,
        )
    if value_type in _TEXT_TYPES:
        text = "\n".join(component_of(r, msg.seps, 1) for r in reps)
        return {"valueString": text}
    if value_type in _CODED_TYPES:
        concept = codeable_concept(reps[0], msg)
        return {"valueCodeableConcept": concept} if concept else {}
    if value_type in _DOCUMENT_TYPES:
        return {}  # a document OBX without data: the Observation keeps its code and status
    if value_type in _DATE_TYPES:
        when = to_fhir_datetime(component_of(reps[0], msg.seps, 1), tz, segment="OBX", field=5)
        return {"valueDateTime": when} if when else {}
    unmapped = f"OBX-2 value type {value_type or '(empty)'} is not mapped yet"
    raise field_error(unmapped, msg, "OBX", 2, kind=UnsupportedMessageError)


def _reference_range(text: str, unit: dict[str, Any]) -> dict[str, Any] | None:
    if not text:
        return None
    m = _RANGE.match(text)
    if m is None:
        return {"text": text}
    return {
        "low": {"value": json_number(Decimal(m[1])), **unit},
        "high": {"value": json_number(Decimal(m[2])), **unit},
        "text": text,
    }


V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
# OBR-25 result status (HL7 table 0123) → DiagnosticReport.status.
_REPORT_STATUS = {
    "F": "final",
    "C": "corrected",
    "A": "partial",
    "P": "preliminary",
    "R": "partial",
    "S": "partial",
    "I": "registered",
    "O": "registered",
    "X": "cancelled",
}


def map_reports(
    msg: Message,
    patient_id: str,
    encounter_id: str | None,
    observations: list[dict[str, Any]],
    tz: ZoneInfo,
) -> list[dict[str, Any]]:
    """One DiagnosticReport per OBR, whose results are the Observations of its OBX.

    ``observations`` must be `map_observations`' output for the same message (same order).
    The id comes from the order number (OBR-3, else OBR-2), so a corrected report
    overwrites the preliminary one.
    """
    out: list[dict[str, Any]] = []
    index = 0
    report: dict[str, Any] | None = None
    lines: list[str] = []
    for seg in msg.segments:
        if seg.name == "OBR":
            _add_text(report, lines)
            report = _report(seg, msg, patient_id, encounter_id, tz)
            out.append(report)
        elif seg.name == "OBX":
            if _is_blank(seg, msg):
                continue
            if report is not None and is_narrative(seg, msg):
                lines.extend(component_of(r, msg.seps, 1) for r in seg.repetitions(5))
                continue
            if report is not None and index < len(observations):
                made = observations[index]
                if made["resourceType"] == "Observation":
                    report.setdefault("result", []).append({"reference": f"Observation/{made['id']}"})
                else:
                    report.setdefault("presentedForm", []).append(made["content"][0]["attachment"])
            index += 1
    _add_text(report, lines)
    return out


def _add_text(report: dict[str, Any] | None, lines: list[str]) -> None:
    """Uncoded report lines as the report's text/plain presentedForm (first, before files)."""
    text = "\n".join(lines).strip("\n")
    lines.clear()
    if report is None or not text:
        return
    report.setdefault("presentedForm", []).insert(0, text_attachment(text))


def _report(
    obr: Segment, msg: Message, patient_id: str, encounter_id: str | None, tz: ZoneInfo
) -> dict[str, Any]:
    concept = concept_at(obr, 4, msg)
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": deterministic_id("DiagnosticReport", msg.msh.value(4), _order_number(obr, msg)),
        "status": _REPORT_STATUS.get(obr.value(25).upper(), "unknown"),
        "code": concept or {"text": "Report"},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    section = obr.value(24)
    if section:
        resource["category"] = [{"coding": [{"system": V2_0074, "code": section}]}]
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    effective = to_fhir_datetime(obr.value(7), tz, segment="OBR", field=7)
    if effective:
        resource["effectiveDateTime"] = effective
    issued = to_fhir_datetime(obr.value(22), tz, segment="OBR", field=22)
    if issued and "T" in issued:  # issued is an instant: only with a time
        resource["issued"] = issued
    return resource
