"""OBX → Observation for results messages (ORU^R01).

Pure functions. Each OBX becomes one Observation whose id is derived from the order
(filler/placer number), the observation code and sub-id, so a corrected result (OBX-11
``C``) overwrites the preliminary one instead of adding a second.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from kernel.attachments import text_attachment
from kernel.errors import Hl7Error, UnsupportedMessageError
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
    where,
)
from kernel.hl7v2.dtm import DtmError, read_dtm, to_fhir_datetime
from kernel.hl7v2.parser import Message, Segment, component_of
from kernel.quality import (
    DROPPED_CONTENT,
    MALFORMED_VALUE,
    REPEATED_IDENTIFIER,
    UNKNOWN_VALUE_TYPE,
    absent,
    raw_value_extension,
    report_issue,
    tolerate,
)

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
_TEXT_TYPES = {"ST", "TX", "FT"}
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
    numbers = order_numbers(msg)
    for seg in msg.segments:
        if seg.name == "OBR":
            obr = seg
        elif seg.name == "OBX":
            if (narrative and obr is not None and is_narrative(seg, msg)) or _is_blank(seg, msg):
                continue
            order = numbers[msg.position(obr)] if obr is not None else msg.control_id
            code_key = seg.value(3, 1) or seg.value(3, 2)
            sub = seg.value(4)
            occurrence = seen.get((order, code_key, sub), 0)
            seen[(order, code_key, sub)] = occurrence + 1
            parts = (msg.msh.value(4), order, code_key, sub, str(occurrence))
            unreadable = False
            if seg.value(2).upper() in _DOCUMENT_TYPES and _document_data(seg, msg):
                try:
                    doc_id = deterministic_id("DocumentReference", *parts)
                    out.append(_document(seg, obr, msg, doc_id, patient_id, encounter_id, tz))
                    continue
                except Hl7Error as exc:  # kept below as an Observation holding the value as sent
                    tolerate(exc, MALFORMED_VALUE, location=where(seg, msg, 5))
                    unreadable = True
            obs_id = deterministic_id("Observation", *parts)
            try:
                observation = _observation(seg, obr, msg, obs_id, patient_id, encounter_id, tz, category)
                if unreadable:
                    observation.update(_as_sent(seg, seg.value(2).upper()))
                out.append(observation)
            except Hl7Error as exc:
                tolerate(exc, DROPPED_CONTENT, severity="error", location=where(seg, msg))
                out.append(_bare_observation(seg, msg, obs_id, patient_id))
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


def order_numbers(msg: Message) -> dict[int, str]:
    """The number that keys each OBR's report and results, by the OBR's position.

    OBR-3 (filler), else OBR-2 (placer), else the message's control id. Case notifications
    and multi-panel reports repeat one number on several OBRs; those get the set id (OBR-1)
    and service code (OBR-4.1) joined to it (and their position, should even those repeat),
    so neither overwrites the other and a replay of the message gives the same ids again.
    """
    obrs = msg.all("OBR")
    plain = [obr.value(3) or obr.value(2) or msg.control_id for obr in obrs]
    counts = Counter(plain)
    out: dict[int, str] = {}
    used: set[str] = set()
    reported: set[str] = set()
    for n, (obr, number) in enumerate(zip(obrs, plain, strict=True), 1):
        key = number
        if counts[number] > 1:
            key = f"{number}#{obr.value(1)}#{obr.value(4, 1)}"
            if key in used:
                key = f"{key}#{n}"
            if number not in reported and (obr.value(3) or obr.value(2)):
                reported.add(number)
                report_issue(
                    REPEATED_IDENTIFIER,
                    where(obr, msg, 3 if obr.value(3) else 2),
                    f"{counts[number]} OBR segments share one order number; set id and code join their key",
                )
        used.add(key)
        out[msg.position(obr)] = key
    return out


def _bare_observation(obx: Segment, msg: Message, obs_id: str, patient_id: str) -> dict[str, Any]:
    """The last resort for an OBX that could not be mapped: its code if readable, its value as sent."""
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": _STATUS.get(obx.value(11).upper(), "unknown"),
        "code": concept_at(obx, 3, msg) or absent(),
        "subject": {"reference": f"Patient/{patient_id}"},
        **_as_sent(obx, obx.value(2).upper()),
    }


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
    sent = obx.value(2).upper()  # NM, SN, NR, CQ or MO; empty when read as NM by its shape
    return field_number(
        text, obx, 5, msg, why=f"is not a number although OBX-2 is {sent}" if sent else "is not a number"
    )


def _value(obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """OBX-5 as the Observation's value[x], per the HL7 v2-to-FHIR IG's OBX table.

    A type we do not know, or a value its own type does not allow, is kept as sent
    (``valueString`` plus the raw datatype in an extension) and reported as a data-quality
    issue; strict callers (no collector) get the error instead.
    """
    value_type = obx.value(2).upper()
    reps = obx.repetitions(5)
    if not reps or not any(r.strip(msg.seps.component) for r in reps):
        return {}
    if not value_type:
        value_type = _shape_of(reps[0], msg)
        report_issue(
            UNKNOWN_VALUE_TYPE,
            where(obx, msg, 2),
            f"OBX-2 is empty; OBX-5 read as {value_type} by its shape",
            severity="information",
        )
    mapper = _VALUE_MAPPERS.get(value_type)
    if mapper is None:
        error = field_error(
            f"OBX-2 value type {value_type} is not mapped", msg, "OBX", 2, kind=UnsupportedMessageError
        )
        tolerate(error, UNKNOWN_VALUE_TYPE, location=where(obx, msg, 2))
        return _as_sent(obx, value_type)
    try:
        return mapper(reps, obx, msg, unit, tz)
    except Hl7Error as exc:
        tolerate(exc, MALFORMED_VALUE, location=where(obx, msg, 5))
        return _as_sent(obx, value_type)


def _as_sent(obx: Segment, value_type: str) -> dict[str, Any]:
    """The raw OBX-5 as valueString, with the HL7 datatype and text in an extension."""
    raw = obx.get(5)
    return {"valueString": raw, "extension": [raw_value_extension(value_type, raw)]}


_ValueMapper = Callable[[list[str], Segment, Message, dict[str, Any], ZoneInfo], dict[str, Any]]
"""The mapper of one OBX-2 type: (OBX-5 repetitions, the OBX, the message, its unit, zone) → value[x]."""

_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)\s*$")


def _shape_of(raw: str, msg: Message) -> str:
    """The value type an untyped OBX-5 has by its shape: DTM, NM, SN, CWE or ST.

    Eight or more digits that read as a date are a date (a count that large that is also a
    valid calendar date is far rarer in a result than a date is)."""
    text = raw.strip()
    if re.fullmatch(r"(18|19|20|21)\d{6}(\d{4}(\d{2})?)?([+-]\d{4})?", text):
        try:
            read_dtm(text, ZoneInfo("UTC"))
            return "DTM"
        except DtmError:
            pass
    if _NUMBER.match(raw):
        return "NM"
    if msg.seps.component in raw:
        first = component_of(raw, msg.seps, 1)
        if first in ("<", ">", "<=", ">=", "=") or (
            not first and _NUMBER.match(component_of(raw, msg.seps, 2))
        ):
            return "SN"
        return "CWE"
    return "ST"


_COMPARED = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")


def _numeric(
    reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo
) -> dict[str, Any]:
    text = component_of(reps[0], msg.seps, 1)
    compared = _COMPARED.match(text)
    if compared:  # "<0.5" sent as NM (it should be SN): unambiguous, kept with its comparator
        report_issue(
            MALFORMED_VALUE,
            where(obx, msg, 5),
            "OBX-5 is a comparator and a number in one component; read as SN",
            severity="information",
        )
        quantity = {"value": _decimal(compared[2], obx, msg), "comparator": compared[1], **unit}
        return {"valueQuantity": quantity}
    return {"valueQuantity": {"value": _decimal(text, obx, msg), **unit}}


def _structured(
    reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo
) -> dict[str, Any]:
    """SN: ``<^5``, ``^10^-^20`` (range), ``^1^:^128`` (ratio), ``^3^+`` (3 or more)."""
    if msg.seps.component not in reps[0]:  # "<0.10" or "5" written flat: the NM reading holds
        return _numeric(reps, obx, msg, unit, tz)
    comparator, number, separator, second = (component_of(reps[0], msg.seps, n) for n in (1, 2, 3, 4))
    if comparator in ("", "=", "<", ">", "<=", ">=") and (not separator or (separator == "+" and not second)):
        quantity: dict[str, Any] = {"value": _decimal(number, obx, msg), **unit}
        if separator == "+":
            quantity["comparator"] = ">="  # "3+": three or more
        elif comparator not in ("", "="):
            quantity["comparator"] = comparator
        return {"valueQuantity": quantity}
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
    raise field_error("OBX-5 structured numeric with this comparator/separator is not mapped", msg, "OBX", 5)


def _text(reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    return {"valueString": "\n".join(component_of(r, msg.seps, 1) for r in reps)}


def _coded(reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    concept = codeable_concept(reps[0], msg)
    return {"valueCodeableConcept": concept} if concept else {}


def _simple_code(
    reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo
) -> dict[str, Any]:
    """ID and IS: a bare code from an HL7 or local table."""
    code = component_of(reps[0], msg.seps, 1).strip()
    return {"valueCodeableConcept": {"coding": [{"code": code}]}} if code else {}


def _when(reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    when = to_fhir_datetime(component_of(reps[0], msg.seps, 1), tz, segment="OBX", field=5)
    return {"valueDateTime": when} if when else {}


_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def _time(reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """TM (HH[MM[SS[.S]]][+/-ZZZZ]) as a FHIR time; FHIR has no offset on a time, so it is dropped."""
    m = _TM.match(component_of(reps[0], msg.seps, 1).strip())
    if m is None or int(m[1]) > 23 or int(m[2] or 0) > 59 or int(m[3] or 0) > 59:
        raise field_error("OBX-5 is not a time although OBX-2 is TM", msg, "OBX", 5)
    fraction = f".{m[4]}" if m[4] else ""
    return {"valueTime": f"{m[1]}:{m[2] or '00'}:{m[3] or '00'}{fraction}"}


def _range(reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """NR: low^high."""
    low, high = component_of(reps[0], msg.seps, 1), component_of(reps[0], msg.seps, 2)
    out: dict[str, Any] = {}
    if low.strip():
        out["low"] = {"value": _decimal(low, obx, msg), **unit}
    if high.strip():
        out["high"] = {"value": _decimal(high, obx, msg), **unit}
    return {"valueRange": out} if out else {}


def _cq(reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """CQ: quantity^units, the units a CWE written in subcomponents (code&text&system)."""
    quantity: dict[str, Any] = {"value": _decimal(component_of(reps[0], msg.seps, 1), obx, msg)}
    raw = reps[0].split(msg.seps.component)
    units = unit_of(raw[1].replace(msg.seps.subcomponent, msg.seps.component), msg) if len(raw) > 1 else {}
    return {"valueQuantity": {**quantity, **(units or unit)}}


def _mo(reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """MO: quantity^denomination, an ISO 4217 currency."""
    quantity: dict[str, Any] = {"value": _decimal(component_of(reps[0], msg.seps, 1), obx, msg)}
    currency = component_of(reps[0], msg.seps, 2)
    if currency:
        quantity.update(unit="currency", system="urn:iso:std:iso:4217", code=currency)
    return {"valueQuantity": quantity}


def _identifier(
    reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo
) -> dict[str, Any]:
    """CX: the identifier and its assigning authority, as text (Observation has no Identifier value)."""
    value = component_of(reps[0], msg.seps, 1)
    authority = component_of(reps[0], msg.seps, 4, 1) or component_of(reps[0], msg.seps, 4, 2)
    return {"valueString": f"{value} ({authority})" if authority else value} if value else {}


def _as_text(fields: tuple[int, ...], joiner: str = " ") -> _ValueMapper:
    """XPN, XCN, XON, XAD, XTN: the components a reader needs, as one string per repetition
    (the IG maps these to string: Observation has no HumanName or Address value)."""

    def mapper(
        reps: list[str], obx: Segment, msg: Message, unit: dict[str, Any], tz: ZoneInfo
    ) -> dict[str, Any]:
        lines = []
        for rep in reps:
            parts = [component_of(rep, msg.seps, n).strip() for n in fields]
            line = joiner.join(p for p in parts if p)
            if line:
                lines.append(line)
        return {"valueString": "\n".join(lines)} if lines else {}

    return mapper


_VALUE_MAPPERS: dict[str, _ValueMapper] = {
    "NM": _numeric,
    "SN": _structured,
    **dict.fromkeys(_TEXT_TYPES, _text),
    **dict.fromkeys(("CE", "CWE", "CNE", "CF"), _coded),
    **dict.fromkeys(("ID", "IS"), _simple_code),
    **dict.fromkeys(("DT", "DTM", "TS"), _when),
    "TM": _time,
    "NR": _range,
    "CQ": _cq,
    "MO": _mo,
    "CX": _identifier,
    "XPN": _as_text((5, 2, 3, 1, 4)),  # prefix given middle family suffix
    "XCN": _as_text((1, 6, 3, 4, 2, 5)),  # id prefix given middle family suffix
    "XON": _as_text((1, 10)),  # organization name (identifier)
    "XAD": _as_text((1, 2, 3, 4, 5, 6), ", "),  # street, other, city, state, zip, country
    "XTN": _as_text((1, 4, 6, 7)),  # number, email, area code, local number
    **dict.fromkeys(_DOCUMENT_TYPES, lambda *_: {}),  # a document OBX without data keeps its code only
}


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
    numbers = order_numbers(msg)
    index = 0
    report: dict[str, Any] | None = None
    lines: list[str] = []
    for seg in msg.segments:
        if seg.name == "OBR":
            _add_text(report, lines)
            report = _report(seg, numbers[msg.position(seg)], msg, patient_id, encounter_id, tz)
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
    obr: Segment, number: str, msg: Message, patient_id: str, encounter_id: str | None, tz: ZoneInfo
) -> dict[str, Any]:
    concept = concept_at(obr, 4, msg)
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": deterministic_id("DiagnosticReport", msg.msh.value(4), number),
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
