"""FHIR resources → the text a clinician would recognise, one renderer per resource type.

Pure functions. A rendering states the clinical fact and its date in the words of the record
("Potassium 6.2 mmol/L (critical high; ref 3.5-5.1) 2025-01-01 11:00"): codes are shown by
their display text, values with their units, and only what the resource says. Identifiers
(MRN, SSN, subscriber and order numbers), names and addresses are left out: retrieval does
not need them, and the index is one more place patient data would otherwise sit.

`render` returns the resource's sections as (heading, text) pairs; notes and reports with
text attachments have one section per heading of the note, everything else one section.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from kernel.attachments import attachment_text

Resource = dict[str, Any]
Section = tuple[str, str]

# Observation.interpretation codes (v3 ObservationInterpretation) as a chart writes them.
INTERPRETATION = {
    "H": "high",
    "HH": "critical high",
    "HU": "very high",
    "L": "low",
    "LL": "critical low",
    "LU": "very low",
    "A": "abnormal",
    "AA": "critical abnormal",
    "N": "normal",
}


def concept_text(concept: dict[str, Any] | None) -> str:
    """Best human label of a CodeableConcept (text, else a display, else a code)."""
    if not concept:
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for c in concept.get("coding", []):
        if c.get("display"):
            return str(c["display"])
    for c in concept.get("coding", []):
        if c.get("code"):
            return str(c["code"])
    return ""


def _concepts(values: list[dict[str, Any]] | None) -> str:
    return ", ".join(t for t in (concept_text(v) for v in values or []) if t)


def first_code(concept: dict[str, Any] | None) -> str:
    """The first code of a CodeableConcept ("" when it has none)."""
    for c in (concept or {}).get("coding", []):
        if c.get("code"):
            return str(c["code"])
    return ""


def number(value: Any) -> str:
    """A FHIR decimal as written: every digit the source sent (the shortest text that reads back as
    the same float: ``39.922863199629916``, not ``format``'s six-place ``39.922863``), no exponent,
    no trailing zeros. Drafts copy numbers from here, and a rounded number is not in the chart."""
    text = format(Decimal(repr(value)), "f") if isinstance(value, float) else str(value)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def quantity(q: dict[str, Any] | None) -> str:
    """``<5.1 mmol/L``: comparator, value and unit as the resource has them."""
    if not q:
        return ""
    value = q.get("comparator", "") + (number(q["value"]) if "value" in q else "")
    return " ".join(p for p in (value, str(q.get("unit") or q.get("code") or "")) if p)


def when(value: Any) -> str:
    """A FHIR date/dateTime shown to the minute (``2025-01-01 11:00``)."""
    return str(value or "")[:16].replace("T", " ")


def _period(period: dict[str, Any] | None) -> str:
    if not period:
        return ""
    start, end = when(period.get("start")), when(period.get("end"))
    if start and end:
        return f"{start} to {end}"
    return start or (f"until {end}" if end else "")


def _join(head: str, details: list[str], date: str = "") -> str:
    text = head
    details = [d for d in details if d]
    if details:
        text += f" ({'; '.join(details)})"
    return f"{text} {date}".strip() if date else text


def _notes(resource: Resource) -> list[str]:
    return [str(n["text"]) for n in resource.get("note", []) if n.get("text")]


def _observation_value(obs: Resource) -> str:
    if "valueQuantity" in obs:
        return quantity(obs["valueQuantity"])
    for key in ("valueString", "valueDateTime", "valueTime"):
        if key in obs:
            return str(obs[key])
    if "valueCodeableConcept" in obs:
        return concept_text(obs["valueCodeableConcept"])
    if "valueInteger" in obs:
        return str(obs["valueInteger"])
    if "valueBoolean" in obs:
        return "yes" if obs["valueBoolean"] else "no"
    if "valueRange" in obs:
        low, high = quantity(obs["valueRange"].get("low")), quantity(obs["valueRange"].get("high"))
        return f"{low}-{high}" if low and high else low or high
    if "valueRatio" in obs:
        ratio = obs["valueRatio"]
        return f"{quantity(ratio.get('numerator'))}/{quantity(ratio.get('denominator'))}"
    if "valuePeriod" in obs:
        return _period(obs["valuePeriod"])
    return _components(obs) or "(no value)"


def _components(obs: Resource) -> str:
    """``Systolic 120 mmHg, Diastolic 80 mmHg``: each component's name and value."""
    parts = [
        f"{concept_text(c.get('code'))} {_observation_value(c)}".strip() for c in obs.get("component", [])
    ]
    return ", ".join(p for p in parts if p)


def _imaging_study(res: Resource) -> str:
    modalities = ", ".join(str(m.get("code", "")) for m in res.get("modality", []) if m.get("code"))
    title = res.get("description") or _concepts(res.get("procedureCode")) or "imaging study"
    details = [
        modalities,
        f"{res['numberOfSeries']} series" if res.get("numberOfSeries") else "",
        f"{res['numberOfInstances']} images" if res.get("numberOfInstances") else "",
    ]
    details += [
        " ".join(p for p in (str(s.get("description", "")), concept_text(s.get("bodySite"))) if p)
        for s in res.get("series", [])[:5]
    ]
    return _join(f"Imaging: {title}", details, when(res.get("started")))


def render_observation(obs: Resource) -> str:
    """E.g. ``Potassium 6.2 mmol/L (critical high; ref 3.5-5.1) 2025-01-01 11:00``."""
    name = concept_text(obs.get("code")) or "Observation"
    notes: list[str] = []
    for interp in obs.get("interpretation", []):
        for c in interp.get("coding", []):
            label = INTERPRETATION.get(str(c.get("code", "")).upper())
            if label and label != "normal":
                notes.append(label)
    for rr in obs.get("referenceRange", [])[:1]:
        if "low" in rr and "high" in rr:
            notes.append(f"ref {number(rr['low'].get('value', ''))}-{number(rr['high'].get('value', ''))}")
        elif rr.get("text"):
            notes.append(f"ref {rr['text']}")
    status = obs.get("status", "final")
    if status != "final":
        notes.append(str(status))
    value, components = _observation_value(obs), _components(obs)
    if components and value != components:  # a value and components (a genetic variant)
        value += f": {components}"
    text = _join(f"{name} {value}", notes, when(_observation_time(obs)))
    return " ".join([text, *_notes(obs)])


def _observation_time(obs: Resource) -> Any:
    return (
        obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or obs.get("issued")
    )


def _condition(res: Resource) -> str:
    label = concept_text(res.get("code")) or "unnamed condition"
    code = first_code(res.get("code"))
    head = f"Problem: {label}" + (f" [{code}]" if code and code != label else "")
    details = [
        first_code(res.get("clinicalStatus")),
        first_code(res.get("verificationStatus")),
        _concepts(res.get("category")),
        f"onset {when(res['onsetDateTime'])}" if res.get("onsetDateTime") else "",
        f"resolved {when(res['abatementDateTime'])}" if res.get("abatementDateTime") else "",
    ]
    return " ".join([_join(head, details, when(res.get("recordedDate"))), *_notes(res)])


def _allergy(res: Resource) -> str:
    head = f"Allergy: {concept_text(res.get('code')) or 'unspecified substance'}"
    reactions = [
        _concepts(r.get("manifestation")) + (f" ({r['severity']})" if r.get("severity") else "")
        for r in res.get("reaction", [])
    ]
    details = [
        ", ".join(res.get("category", [])),
        f"reaction {'; '.join(r for r in reactions if r)}" if any(reactions) else "",
        f"criticality {res['criticality']}" if res.get("criticality") else "",
        first_code(res.get("clinicalStatus")),
    ]
    date = when(res.get("onsetDateTime") or res.get("recordedDate"))
    return " ".join([_join(head, details, date), *_notes(res)])


def _dosage(dosages: list[dict[str, Any]] | None) -> str:
    out = []
    for d in dosages or []:
        parts = [str(d.get("text", ""))]
        for rate in d.get("doseAndRate", []):
            parts.append(quantity(rate.get("doseQuantity")))
        parts.append(concept_text(d.get("route")))
        timing = d.get("timing") or {}
        parts.append(concept_text(timing.get("code")))
        out.append(" ".join(p for p in parts if p))
    return "; ".join(o for o in out if o)


def _medication(res: Resource) -> str:
    return concept_text(res.get("medicationCodeableConcept")) or str(
        (res.get("medicationReference") or {}).get("display", "unnamed medication")
    )


def _medication_request(res: Resource) -> str:
    details = [
        _dosage(res.get("dosageInstruction")),
        str(res.get("status", "")),
        str(res.get("priority", "")) if res.get("priority") not in (None, "routine") else "",
        f"reason {_concepts(res.get('reasonCode'))}" if res.get("reasonCode") else "",
    ]
    text = _join(f"Medication order: {_medication(res)}", details, when(res.get("authoredOn")))
    return " ".join([text, *_notes(res)])


def _medication_dispense(res: Resource) -> str:
    details = [
        quantity(res.get("quantity")),
        _dosage(res.get("dosageInstruction")),
        str(res.get("status", "")),
    ]
    date = when(res.get("whenHandedOver") or res.get("whenPrepared"))
    return " ".join([_join(f"Medication dispensed: {_medication(res)}", details, date), *_notes(res)])


def _medication_administration(res: Resource) -> str:
    dosage = res.get("dosage") or {}
    details = [
        quantity(dosage.get("dose")),
        concept_text(dosage.get("route")),
        str(res.get("status", "")),
    ]
    date = when(res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start"))
    return " ".join([_join(f"Medication given: {_medication(res)}", details, date), *_notes(res)])


def _procedure(res: Resource) -> str:
    details = [
        str(res.get("status", "")),
        _concepts(res.get("bodySite")),
        f"reason {_concepts(res.get('reasonCode'))}" if res.get("reasonCode") else "",
    ]
    date = when(res.get("performedDateTime") or (res.get("performedPeriod") or {}).get("start"))
    head = f"Procedure: {concept_text(res.get('code')) or 'unnamed procedure'}"
    return " ".join([_join(head, details, date), *_notes(res)])


def _immunization(res: Resource) -> str:
    details = [
        quantity(res.get("doseQuantity")),
        concept_text(res.get("route")),
        concept_text(res.get("site")),
        str(res.get("status", "")),
        f"lot {res['lotNumber']}" if res.get("lotNumber") else "",
    ]
    head = f"Immunization: {concept_text(res.get('vaccineCode')) or 'unnamed vaccine'}"
    return " ".join([_join(head, details, when(res.get("occurrenceDateTime"))), *_notes(res)])


def _encounter(res: Resource) -> str:
    klass = res.get("class") or {}
    kind = str(klass.get("display") or klass.get("code") or "encounter")
    period = res.get("period") or {}
    details = [
        str(res.get("status", "")),
        f"admitted {when(period['start'])}" if period.get("start") else "",
        f"discharged {when(period['end'])}" if period.get("end") else "",
        f"reason {_concepts(res.get('reasonCode'))}" if res.get("reasonCode") else "",
        _concepts(res.get("type")),
        ", ".join(
            str((loc.get("location") or {}).get("display", ""))
            for loc in res.get("location", [])
            if (loc.get("location") or {}).get("display")
        ),
    ]
    discharge = concept_text((res.get("hospitalization") or {}).get("dischargeDisposition"))
    if discharge:
        details.append(f"discharge disposition {discharge}")
    return _join(f"Encounter: {kind}", details)


def _service_request(res: Resource) -> str:
    details = [
        str(res.get("status", "")),
        str(res.get("priority", "")) if res.get("priority") not in (None, "routine") else "",
        f"reason {_concepts(res.get('reasonCode'))}" if res.get("reasonCode") else "",
        f"due {when(res['occurrenceDateTime'])}" if res.get("occurrenceDateTime") else "",
    ]
    head = f"Order: {concept_text(res.get('code')) or 'unnamed order'}"
    return " ".join([_join(head, details, when(res.get("authoredOn"))), *_notes(res)])


def _specimen(res: Resource) -> str:
    collection = res.get("collection") or {}
    date = when(collection.get("collectedDateTime") or (collection.get("collectedPeriod") or {}).get("start"))
    details = [concept_text(collection.get("bodySite")), quantity(collection.get("quantity"))]
    head = f"Specimen: {concept_text(res.get('type')) or 'unspecified'}"
    return " ".join([_join(head, details, date), *_notes(res)])


def _appointment(res: Resource) -> str:
    details = [
        str(res.get("status", "")),
        _concepts(res.get("serviceType")),
        f"reason {_concepts(res.get('reasonCode'))}" if res.get("reasonCode") else "",
        f"{res['minutesDuration']} min" if res.get("minutesDuration") else "",
        str(res.get("description", "")),
    ]
    head = f"Appointment: {concept_text(res.get('appointmentType')) or 'visit'}"
    return _join(head, details, when(res.get("start")))


def _coverage(res: Resource) -> str:
    payors = ", ".join(str(p.get("display", "")) for p in res.get("payor", []) if p.get("display"))
    plans = ", ".join(str(c.get("name", "")) for c in res.get("class", []) if c.get("name"))
    details = [plans, str(res.get("status", "")), _period(res.get("period"))]
    return _join(f"Coverage: {payors or 'unnamed payor'}", details)


def _patient(res: Resource) -> str:
    details = [
        str(res.get("gender", "")),
        f"born {res['birthDate']}" if res.get("birthDate") else "",
        f"died {when(res['deceasedDateTime'])}" if res.get("deceasedDateTime") else "",
        "deceased" if res.get("deceasedBoolean") else "",
        concept_text(res.get("maritalStatus")),
        "speaks " + ", ".join(concept_text(c.get("language")) for c in res.get("communication", []))
        if res.get("communication")
        else "",
    ]
    return _join("Patient", details) if any(details) else ""


def _diagnostic_report(res: Resource) -> list[Section]:
    details = [
        str(res.get("status", "")),
        _concepts(res.get("category")),
    ]
    date = when(
        res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start") or res.get("issued")
    )
    title = f"Report: {concept_text(res.get('code')) or 'unnamed report'}"
    head = _join(title, details, date)
    if res.get("conclusion"):
        head += f" Conclusion: {res['conclusion']}"
    if res.get("conclusionCode"):
        head += f" Conclusion: {_concepts(res['conclusionCode'])}"
    sections: list[Section] = [("", head)]
    for attachment in res.get("presentedForm", []):
        sections.extend(note_sections(attachment_text(attachment)))
    return sections


def _document_reference(res: Resource) -> list[Section]:
    context = res.get("context") or {}
    date = when(res.get("date") or (context.get("period") or {}).get("start"))
    details = [str(res.get("docStatus", "")), _concepts(res.get("category"))]
    head = _join(
        f"Note: {concept_text(res.get('type')) or str(res.get('description') or 'clinical note')}",
        details,
        date,
    )
    sections: list[Section] = [("", head)]
    for content in res.get("content", []):
        sections.extend(note_sections(attachment_text(content.get("attachment") or {})))
    return sections


# A heading: a Markdown heading, a short line in capitals, or a short label and a colon that
# ends the line ("HISTORY OF PRESENT ILLNESS:", "Plan:") or is long and in capitals.
_MARKDOWN = re.compile(r"^\s*#{1,6}\s+(?P<title>.{1,80}?)\s*$")
_CAPS = re.compile(r"^\s*(?P<title>[A-Z][A-Z0-9 /&,()'-]{2,60}?)\s*$")
_LABEL = re.compile(r"^\s*(?P<title>[A-Za-z][A-Za-z0-9 /&,()'-]{1,60}?)\s*:\s*(?P<rest>.*?)\s*$")


def _heading(line: str) -> tuple[str, str] | None:
    """(heading, text after it on the line) when ``line`` opens a section."""
    for pattern in (_MARKDOWN, _CAPS):
        m = pattern.match(line)
        if m:
            return m["title"], ""
    m = _LABEL.match(line)
    if m is None:
        return None
    title = m["title"]
    # With text after the colon only a long capitalised label opens a section: "ASSESSMENT:
    # stable" does, "BP: 120/80" and "WBC: 11.2" are values.
    if not m["rest"] or (title.isupper() and len(title) >= 8):
        return title, m["rest"]
    return None


def note_sections(text: str) -> list[Section]:
    """A note split at its headings: (heading, body) pairs, text before the first heading
    under ``""``. Empty sections are dropped."""
    sections: list[Section] = []
    heading, lines = "", []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        found = _heading(line)
        if found is None:
            lines.append(line)
            continue
        body = "\n".join(lines).strip()
        if body:
            sections.append((heading, body))
        heading, rest = found
        lines = [rest] if rest else []
    body = "\n".join(lines).strip()
    if body:
        sections.append((heading, body))
    return sections


RENDERERS: dict[str, Callable[[Resource], str]] = {
    "Observation": render_observation,
    "Condition": _condition,
    "AllergyIntolerance": _allergy,
    "MedicationRequest": _medication_request,
    "MedicationDispense": _medication_dispense,
    "MedicationAdministration": _medication_administration,
    "Procedure": _procedure,
    "Immunization": _immunization,
    "Encounter": _encounter,
    "ServiceRequest": _service_request,
    "Specimen": _specimen,
    "Appointment": _appointment,
    "Coverage": _coverage,
    "Patient": _patient,
    "ImagingStudy": _imaging_study,
}
SECTIONED: dict[str, Callable[[Resource], list[Section]]] = {
    "DiagnosticReport": _diagnostic_report,
    "DocumentReference": _document_reference,
}

INDEXED_TYPES: tuple[str, ...] = (*RENDERERS, *SECTIONED)
"""Every resource type the index holds (what a search over ``*`` can return)."""


def render(resource: Resource) -> list[Section]:
    """The resource's text as (heading, text) sections; ``[]`` for a type not indexed."""
    kind = str(resource.get("resourceType", ""))
    sectioned = SECTIONED.get(kind)
    if sectioned is not None:
        return [(h, t) for h, t in sectioned(resource) if t.strip()]
    renderer = RENDERERS.get(kind)
    if renderer is None:
        return []
    text = " ".join(renderer(resource).split())
    return [("", text)] if text else []


TIME_FIELDS = {
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "Condition": ("onsetDateTime", "recordedDate", "onsetPeriod.start"),
    "AllergyIntolerance": ("onsetDateTime", "recordedDate"),
    "MedicationRequest": ("authoredOn",),
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "MedicationAdministration": ("effectiveDateTime", "effectivePeriod.start"),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "Immunization": ("occurrenceDateTime",),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    "DocumentReference": ("date", "context.period.start"),
    "Encounter": ("period.start",),
    "ServiceRequest": ("authoredOn", "occurrenceDateTime"),
    "Specimen": ("collection.collectedDateTime", "collection.collectedPeriod.start", "receivedTime"),
    "Appointment": ("start",),
    "Coverage": ("period.start",),
    "ImagingStudy": ("started",),
}


def effective_time(resource: Resource) -> str:
    """The clinically relevant time of a resource as written (``""`` when it has none)."""
    for path in TIME_FIELDS.get(str(resource.get("resourceType", "")), ()):
        value: Any = resource
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value:
            return str(value)
    return ""
