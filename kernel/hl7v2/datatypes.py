"""HL7 v2 datatypes as FHIR elements: coded (CE/CWE/CNE), person (XCN), numeric (NM), time
(TS/DTM), unit, encapsulated data (ED) and reference pointer (RP), NTE notes.

Pure functions, shared by every mapper. Errors name the place (``OBX-5``), never the value.
"""

from __future__ import annotations

import base64
import binascii
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from kernel.errors import Hl7Error, MappingError
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import Message, Segment, component_of, components
from kernel.quality import MISSING_ELEMENT, absent, tolerate
from kernel.units import UCUM, quantity_unit

LOINC = "http://loinc.org"


# Coding-system names used in CWE.3 → canonical FHIR system URIs.
CODE_SYSTEMS = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "UCUM": UCUM,
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "MVX": "http://hl7.org/fhir/sid/mvx",
    "NDC": "http://hl7.org/fhir/sid/ndc",
}


# ED/RP type of data (HL7 table 0191) → MIME top-level type.
_MEDIA = {
    "IM": "image",
    "AP": "application",
    "AU": "audio",
    "TX": "text",
    "TEXT": "text",
    "NS": "application",
}


def coding(raw: str, msg: Message, *, offset: int = 0) -> dict[str, Any] | None:
    """One FHIR Coding from CWE components (1-3, or 4-6 with ``offset=3``)."""
    return _coding(components(raw, msg.seps), offset)


def _part(parts: list[str], number: int) -> str:
    return parts[number - 1] if number <= len(parts) else ""


def _coding(parts: list[str], offset: int) -> dict[str, Any] | None:
    code = _part(parts, 1 + offset)
    display = _part(parts, 2 + offset)
    sys_name = _part(parts, 3 + offset)
    if not code and not display:
        return None
    out: dict[str, Any] = {}
    system = CODE_SYSTEMS.get(sys_name.upper()) if sys_name else None
    if system:
        out["system"] = system
    elif sys_name:
        out["system"] = f"urn:clinstream:codesystem:{sys_name}"
    if code:
        out["code"] = code
    if display:
        out["display"] = display
    return out


def notes_after(msg: Message, seg: Segment) -> list[dict[str, str]]:
    """The NTE segments that directly follow ``seg``, as FHIR Annotations."""
    out: list[dict[str, str]] = []
    start = msg.position(seg) + 1
    for nxt in msg.segments[start:]:
        if nxt.name != "NTE":
            break
        text = "\n".join(component_of(r, msg.seps, 1) for r in nxt.repetitions(3) if r)
        if text:
            out.append({"text": text})
    return out


def practitioner_ref(raw: str, msg: Message) -> dict[str, Any] | None:
    """A Reference by identifier and display to the person an XCN names (no resource is made)."""
    seps = msg.seps
    ident = component_of(raw, seps, 1)
    name = " ".join(p for p in (component_of(raw, seps, 3), component_of(raw, seps, 2, 1)) if p)
    if not ident and not name:
        return None
    ref: dict[str, Any] = {}
    if ident:
        ref["identifier"] = {"value": ident}
    if name:
        ref["display"] = name
    return ref


def concept_at(seg: Segment | None, field: int, msg: Message) -> dict[str, Any] | None:
    """The CodeableConcept of a coded field's first repetition; None when absent or empty."""
    raw = seg.repetitions(field) if seg is not None else []
    return codeable_concept(raw[0], msg) if raw else None


def field_error(
    text: str, msg: Message, segment: str, field: int, *, code: int = 102, kind: type[Hl7Error] = MappingError
) -> Hl7Error:
    """An error at ``segment-field`` of ``msg`` with its HL7 table 0357 ``code``; ``text`` names
    the place and the problem, never the value."""
    return kind(text, code=code, segment=segment, field=field, control_id=msg.control_id)


def where(seg: Segment, msg: Message, field: int | None = None) -> str:
    """The place of a field for a data-quality issue: ``OBX[3]-5`` is OBX-5 of the third OBX."""
    occurrence = next(n for n, s in enumerate(msg.all(seg.name), 1) if s is seg)
    return f"{seg.name}[{occurrence}]" + (f"-{field}" if field is not None else "")


def missing_field(seg: Segment, field: int, msg: Message, what: str) -> Hl7Error:
    """The error for a required field left empty: HL7 code 101 at ``SEG-field``."""
    return field_error(f"{seg.name}-{field} {what} is missing", msg, seg.name, field, code=101)


def required_concept(seg: Segment, field: int, msg: Message, what: str) -> dict[str, Any]:
    """The CodeableConcept of a required coded field (first repetition). FHIR requires the
    element, so an empty field is kept as not sent (a data-absent-reason extension, never an
    invented code) with a missing-element issue at ``SEG[n]-field``.

    Raises:
        MappingError: code 101 at ``SEG-field`` when the field is empty and no conversion
            is collecting data-quality issues (`kernel.quality`).
    """
    concept = concept_at(seg, field, msg)
    if concept is None:
        tolerate(missing_field(seg, field, msg, what), MISSING_ELEMENT, location=where(seg, msg, field))
        return absent()
    return concept


def codeable_concept(raw: str, msg: Message) -> dict[str, Any] | None:
    """CodeableConcept from a CWE/CE with its primary and alternate codings."""
    parts = components(raw, msg.seps)
    codings = [c for c in (_coding(parts, 0), _coding(parts, 3)) if c]
    if not codings:
        return None
    concept: dict[str, Any] = {"coding": codings}
    text = _part(parts, 2) or _part(parts, 9)
    if text:
        concept["text"] = text
    return concept


def ed_attachment(raw: str, msg: Message) -> dict[str, Any] | None:
    """FHIR Attachment from an ED value (source^type^subtype^encoding^data), or None when empty.

    ED-4 is Base64 (line breaks and missing padding, as senders split long data, tolerated),
    ``A`` (the data is the text itself) or ``Hex``; the attachment always carries Base64.

    Raises:
        MappingError: another encoding, or data that is not what its encoding says.
    """
    seps = msg.seps
    data = component_of(raw, seps, 5)
    if not data:
        return None
    encoding = component_of(raw, seps, 4).upper()
    try:
        if encoding == "BASE64":
            packed = "".join(data.split())
            packed += "=" * (-len(packed) % 4)
            base64.b64decode(packed, validate=True)
            data = packed
        elif encoding == "A":
            data = base64.b64encode(data.encode("utf-8")).decode()
        elif encoding == "HEX":
            data = base64.b64encode(bytes.fromhex(data)).decode()
        else:
            raise field_error("OBX-5 ED encoding other than Base64, A or Hex is not mapped", msg, "OBX", 5)
    except (binascii.Error, ValueError) as exc:
        raise field_error(f"OBX-5 ED data is not valid {encoding.title()}", msg, "OBX", 5) from exc
    media = _MEDIA.get(component_of(raw, seps, 2).upper(), "application")
    subtype = component_of(raw, seps, 3).lower() or "octet-stream"
    return {"contentType": f"{media}/{subtype}", "data": data}


def rp_attachment(raw: str, msg: Message) -> dict[str, Any] | None:
    """FHIR Attachment pointing at an RP value (pointer^application^type^subtype)."""
    seps = msg.seps
    url = component_of(raw, seps, 1)
    if not url:
        return None
    out: dict[str, Any] = {"url": url}
    media = _MEDIA.get(component_of(raw, seps, 3).upper())
    subtype = component_of(raw, seps, 4).lower()
    if media and subtype:
        out["contentType"] = f"{media}/{subtype}"
    return out


def unit_of(raw: str, msg: Message) -> dict[str, Any]:
    """Quantity ``unit``/``system``/``code`` from a CWE unit (code^text^system).

    ``unit`` is the human-readable form (CWE.2, else the code). The UCUM system and code are
    set only when the coding system is UCUM, ISO+, ANS+ or unnamed and the code is UCUM as
    written or in one of the unambiguous spellings `kernel.units` rewrites (beats/min → /min).
    """
    seps = msg.seps
    code = component_of(raw, seps, 1)
    text = component_of(raw, seps, 2)
    if component_of(raw, seps, 3).upper() in ("UCUM", "ISO+", "ANS+", ""):
        return quantity_unit(code, text)
    shown = text or code
    return {"unit": shown} if shown else {}


def json_number(value: Decimal) -> int | float:
    """A decimal as a JSON number: an int when integral (``138``), else a float (``6.4``)."""
    if value == value.to_integral_value() and abs(value) < 2**53:
        return int(value)
    return float(value)


def field_number(
    text: str, seg: Segment, field: int, msg: Message, *, why: str = "is not a number"
) -> int | float:
    """A finite decimal from a numeric field, as a JSON number.

    Raises:
        MappingError: code 102 at ``SEG-field``; the message names the place, never the text.
    """
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise field_error(f"{seg.name}-{field} {why}", msg, seg.name, field) from exc
    if not value.is_finite():
        raise field_error(f"{seg.name}-{field} is not a finite number", msg, seg.name, field)
    return json_number(value)


def required_datetime(seg: Segment, field: int, msg: Message, tz: ZoneInfo, what: str) -> str:
    """The FHIR dateTime of a required timestamp field.

    Raises:
        MappingError: code 101 when the field is empty, 102 when it is malformed.
    """
    when = to_fhir_datetime(seg.value(field), tz, segment=seg.name, field=field)
    if when is None:
        raise missing_field(seg, field, msg, what)
    return when
