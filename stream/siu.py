"""SIU^S12-S26 (scheduling) → Appointment.

Pure functions. The Appointment's id comes from the sending facility and the filler
appointment id (SCH-2, else the placer's SCH-1), so every later event about the same
appointment (reschedule S13, modify S14, cancel S15, no-show S26...) overwrites it.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from kernel.errors import MappingError
from kernel.events import deterministic_id
from kernel.hl7v2.datatypes import codeable_concept, concept_at, missing_field, notes_after, practitioner_ref
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import Message, Segment, component_of
from stream.orders import V2_0203

# SCH-25 filler status (HL7 table 0278) → Appointment.status.
_FILLER_STATUS = {
    "BOOKED": "booked",
    "OVERBOOK": "booked",
    "PENDING": "pending",
    "WAITLIST": "waitlist",
    "CANCELLED": "cancelled",
    "DELETED": "entered-in-error",
    "NOSHOW": "noshow",
    "COMPLETE": "fulfilled",
    "STARTED": "arrived",
    "DC": "cancelled",
    "BLOCKED": "booked",
}
# Trigger events that fix the status whatever SCH-25 says.
_EVENT_STATUS = {"S15": "cancelled", "S16": "cancelled", "S17": "entered-in-error", "S26": "noshow"}
SIU_EVENTS = frozenset(f"S{n}" for n in range(12, 27))
_RESOURCE_SEGMENTS = ("AIS", "AIG", "AIL", "AIP")


def map_appointment(msg: Message, patient_id: str, tz: ZoneInfo) -> dict[str, Any]:
    """The Appointment of one SIU message.

    Raises:
        MappingError: no SCH segment, or no appointment id in SCH-1/SCH-2.
    """
    sch = msg.first("SCH")
    if sch is None:
        raise MappingError("SCH segment is missing", code=100, segment="SCH", control_id=msg.control_id)
    key = sch.value(2) or sch.value(1)
    if not key:
        raise missing_field(sch, 2, msg, "filler appointment id")
    filler_status = sch.value(25, 1).upper()
    status = _EVENT_STATUS.get(msg.trigger_event) or _FILLER_STATUS.get(filler_status, "booked")
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": deterministic_id("Appointment", msg.msh.value(4), key),
        "status": status,
        "identifier": [
            {
                "value": value,
                "type": {"coding": [{"system": V2_0203, "code": kind}]},
            }
            for kind, value in (("PLAC", sch.value(1)), ("FILL", sch.value(2)))
            if value
        ],
    }
    reason = concept_at(sch, 7, msg)
    if reason:
        resource["reasonCode"] = [reason]
    kind = concept_at(sch, 8, msg)
    if kind:
        resource["appointmentType"] = kind
    start, end = _times(msg, sch, tz)
    if start:
        resource["start"] = start
    if end:
        resource["end"] = end
    duration = sch.value(9)
    if duration.isdigit() and sch.value(10, 1).lower() in ("min", "minutes", "m"):
        resource["minutesDuration"] = int(duration)
    services = [codeable_concept(r, msg) for s in msg.all("AIS") for r in s.repetitions(3)[:1]]
    services = [s for s in services if s]
    if services:
        resource["serviceType"] = services
    notes = notes_after(msg, msg.first("TQ1") or sch)
    if notes:
        resource["comment"] = " ".join(n["text"] for n in notes)
    resource["participant"] = [
        {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
        *_resources(msg),
    ]
    return resource


def _times(msg: Message, sch: Segment, tz: ZoneInfo) -> tuple[str | None, str | None]:
    """TQ1-7/8 (v2.5+), else SCH-11.4/11.5 (timing quantity), else the first AIS-4 start."""
    tq1 = msg.first("TQ1")
    if tq1 is not None and tq1.value(7):
        return (
            to_fhir_datetime(tq1.value(7), tz, segment="TQ1", field=7),
            to_fhir_datetime(tq1.value(8), tz, segment="TQ1", field=8),
        )
    if sch.value(11, 4):
        return (
            to_fhir_datetime(sch.value(11, 4), tz, segment="SCH", field=11),
            to_fhir_datetime(sch.value(11, 5), tz, segment="SCH", field=11),
        )
    for seg in msg.segments:
        if seg.name in _RESOURCE_SEGMENTS:
            field = 6 if seg.name in ("AIL", "AIP") else (4 if seg.name == "AIS" else 8)
            when = to_fhir_datetime(seg.value(field), tz, segment=seg.name, field=field)
            if when:
                return when, None
    return None, None


def _resources(msg: Message) -> list[dict[str, Any]]:
    """AIP (personnel) and AIL (location) as participants named by display, AIG as text."""
    out: list[dict[str, Any]] = []
    seps = msg.seps
    for seg in msg.segments:
        actor: dict[str, Any] | None = None
        if seg.name == "AIP":
            raw = seg.repetitions(3)
            actor = practitioner_ref(raw[0], msg) if raw else None
        elif seg.name == "AIL":
            raw = seg.repetitions(3)
            if raw:
                parts = [component_of(raw[0], seps, i) for i in (4, 1, 2, 3)]
                label = " ".join(p for p in parts if p)
                actor = {"display": label} if label else None
        elif seg.name == "AIG":
            raw = seg.repetitions(3)
            label = component_of(raw[0], seps, 2) or component_of(raw[0], seps, 1) if raw else ""
            actor = {"display": label} if label else None
        if actor is None:
            continue
        status = seg.value(12 if seg.name in ("AIL", "AIP") else 14, 1).upper()
        out.append(
            {"actor": actor, "status": "declined" if status in ("CANCELLED", "DELETED") else "accepted"}
        )
    return out
