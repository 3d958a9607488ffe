"""VXU^V04 (RXA, RXR, ORC) → Immunization, one per RXA.

Pure functions. Follows the CDC immunization implementation guide where it speaks:
RXA-6 ``999`` means "amount unknown" and yields no doseQuantity; RXA-9 ``00`` (new
record) marks a primary-source administration, ``01`` a historical one; RXA-20 RE/NA
(refused, not administered) → ``not-done``; RXA-21 D (delete) → ``entered-in-error``.
"""

from __future__ import annotations

from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from kernel.events import deterministic_id
from kernel.hl7v2.datatypes import (
    codeable_concept,
    field_number,
    missing_field,
    required_concept,
    unit_of,
    where,
)
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import Message, Segment
from kernel.quality import kept

_STATUS = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}
UNKNOWN_AMOUNT = "999"


def map_immunizations(
    msg: Message, patient_id: str, encounter_id: str | None, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """Every RXA as an Immunization (RXR after an RXA gives its route and site)."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    order: Segment | None = None
    for seg in msg.segments:
        if seg.name == "ORC":
            order = seg
        elif seg.name == "RXA":
            build = partial(_immunization, seg, order, msg, patient_id, encounter_id, tz)
            current = kept(build, where(seg, msg))
            if current is not None:
                out.append(current)
        elif seg.name == "RXR" and current is not None:
            route = seg.repetitions(1)
            site = seg.repetitions(2)
            if route and (concept := codeable_concept(route[0], msg)):
                current["route"] = concept
            if site and (concept := codeable_concept(site[0], msg)):
                current["site"] = concept
    return out


def _immunization(
    rxa: Segment, order: Segment | None, msg: Message, patient_id: str, encounter_id: str | None, tz: ZoneInfo
) -> dict[str, Any]:
    vaccine = required_concept(rxa, 5, msg, "administered code")
    when = to_fhir_datetime(rxa.value(3), tz, segment="RXA", field=3)
    filler = order.value(3) if order is not None else ""
    # Senders reuse one order number for several administrations (the IG's own VXU sample
    # does): the vaccine and the time tell them apart.
    key = f"{filler}|{rxa.value(5, 1)}@{rxa.value(3)}"
    status = (
        "entered-in-error"
        if rxa.value(21).upper() == "D"
        else _STATUS.get(rxa.value(20).upper(), "completed")
    )
    resource: dict[str, Any] = {
        "resourceType": "Immunization",
        "id": deterministic_id("Immunization", patient_id, msg.msh.value(4), key),
        "status": status,
        "vaccineCode": vaccine,
        "patient": {"reference": f"Patient/{patient_id}"},
    }
    if when:
        resource["occurrenceDateTime"] = when
    elif rxa.value(3).strip():  # unreadable: FHIR's string form keeps it as sent
        resource["occurrenceString"] = rxa.value(3).strip()
    else:  # FHIR requires a time, and there is nothing to keep
        raise missing_field(rxa, 3, msg, "administration date")
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    amount = rxa.value(6).strip()
    if amount and amount != UNKNOWN_AMOUNT:
        dose: dict[str, Any] = {
            "value": field_number(amount, rxa, 6, msg, why="administered amount is not a number")
        }
        units = rxa.repetitions(7)
        if units:
            dose.update(unit_of(units[0], msg))
        resource["doseQuantity"] = dose
    source = rxa.value(9).strip()
    if source in ("00", "01"):
        resource["primarySource"] = source == "00"
    lot = rxa.value(15)
    if lot:
        resource["lotNumber"] = lot
    expiry = to_fhir_datetime(rxa.value(16)[:8], tz, segment="RXA", field=16)
    if expiry:
        resource["expirationDate"] = expiry
    refusal = rxa.repetitions(18)
    if status == "not-done" and refusal and (reason := codeable_concept(refusal[0], msg)):
        resource["statusReason"] = reason
    return resource
