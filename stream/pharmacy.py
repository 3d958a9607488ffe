"""Pharmacy segments → MedicationRequest, MedicationDispense, MedicationAdministration.

Pure functions over the order groups of `stream.orders`: an ORC with RXO and/or RXE is a
medication order (RDE^O11/O25, OMP^O09, an ORM^O01 with RXO); RXD is a dispense of it
(RDS^O13); RXA an administration (RAS^O17). The medication itself is a CodeableConcept on
each resource (RxNorm, NDC or local codes as sent); no separate Medication resource is made,
because a code from one message is all an order carries (``docs/mapping.md``).
"""

from __future__ import annotations

from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from kernel.errors import Hl7Error
from kernel.events import deterministic_id
from kernel.hl7v2.datatypes import (
    codeable_concept,
    concept_at,
    field_number,
    required_concept,
    required_datetime,
    unit_of,
    where,
)
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import Message, Segment, component_of
from kernel.quality import MALFORMED_VALUE, kept, tolerate
from stream.orders import (
    order_groups,
    order_keys,
    order_request,
)

# RXA-20 completion status (HL7 table 0322) → MedicationAdministration.status.
_ADMINISTRATION_STATUS = {"CP": "completed", "PA": "in-progress", "RE": "not-done", "NA": "not-done"}


def map_medications(
    msg: Message, patient_id: str, encounter_id: str | None, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """Every medication order of the message with its dispenses and administrations."""
    out: list[dict[str, Any]] = []
    for key, (orc, _detail, segments) in zip(order_keys(msg), order_groups(msg), strict=True):
        if not segments:
            continue
        order = next((s for s in segments if s.name == "RXE"), None) or next(
            (s for s in segments if s.name == "RXO"), None
        )
        request_id = deterministic_id("MedicationRequest", msg.msh.value(4), key)
        builds = []
        if order is not None:
            builds.append(
                (order, partial(_request, msg, orc, order, request_id, patient_id, encounter_id, tz))
            )
        based_on = request_id if order else None
        for n, seg in enumerate(s for s in segments if s.name == "RXD"):
            builds.append((seg, partial(_dispense, msg, seg, key, n, based_on, patient_id, tz)))
        for n, seg in enumerate(s for s in segments if s.name == "RXA"):
            builds.append((seg, partial(_administration, msg, seg, key, n, based_on, patient_id, tz)))
        for seg, build in builds:  # one unreadable segment costs its own resource, no more
            made = kept(build, where(seg, msg))
            if made is not None:
                out.append(made)
    return out


def _quantity(value: str, unit_raw: str, msg: Message, seg: Segment, field: int) -> dict[str, Any] | None:
    if not value.strip():
        return None
    try:
        return {"value": field_number(value, seg, field, msg), **unit_of(unit_raw, msg)}
    except Hl7Error as exc:  # an amount that is no number is left out, the order kept
        tolerate(exc, MALFORMED_VALUE, location=where(seg, msg, field))
        return None


def _route(msg: Message, after: Segment) -> dict[str, Any] | None:
    """RXR-1 of the RXR segment that follows ``after`` within its group."""
    start = msg.position(after) + 1
    for seg in msg.segments[start:]:
        if seg.name in ("RXR",):
            return concept_at(seg, 1, msg)
        if seg.name in ("ORC", "RXO", "RXE", "RXD", "RXA", "RXG"):
            return None
    return None


def _timing(msg: Message, order: Segment, tz: ZoneInfo) -> dict[str, Any] | None:
    """TQ1 (v2.5+) else RXE-1 quantity/timing (v2.3-2.4): repeat pattern and start/end."""
    start = msg.position(order)
    tq1 = next((s for s in reversed(msg.segments[:start]) if s.name in ("TQ1", "ORC")), None)
    after = next((s for s in msg.segments[start + 1 :] if s.name in ("TQ1", "ORC", "RXO", "RXE")), None)
    if after is not None and after.name == "TQ1":
        tq1 = after
    if tq1 is not None and tq1.name == "TQ1":
        pattern = tq1.value(3, 1)
        begin = to_fhir_datetime(tq1.value(7), tz, segment="TQ1", field=7)
        end = to_fhir_datetime(tq1.value(8), tz, segment="TQ1", field=8)
    elif order.name == "RXE":
        pattern = order.value(1, 2)
        begin = to_fhir_datetime(order.value(1, 4), tz, segment="RXE", field=1)
        end = to_fhir_datetime(order.value(1, 5), tz, segment="RXE", field=1)
    else:
        return None
    timing: dict[str, Any] = {}
    if pattern:
        timing["code"] = {"text": pattern}
    bounds = {k: v for k, v in (("start", begin), ("end", end)) if v}
    if bounds:
        timing["repeat"] = {"boundsPeriod": bounds}
    return timing or None


def _request(
    msg: Message,
    orc: Segment | None,
    order: Segment,
    request_id: str,
    patient_id: str,
    encounter_id: str | None,
    tz: ZoneInfo,
) -> dict[str, Any]:
    rxe = order.name == "RXE"
    concept = required_concept(order, 2 if rxe else 1, msg, "medication code")
    prescription = order.value(15) if rxe else ""  # RXE-15 prescription number
    resource = order_request(
        "MedicationRequest",
        request_id,
        msg,
        orc,
        None,
        patient_id,
        encounter_id,
        tz,
        identifiers=({"value": prescription},) if prescription else (),
    )
    resource["medicationCodeableConcept"] = concept
    # Amount and units: RXE-3/4/5 or RXO-2/3/4; instructions RXE-7 / RXO-7; indication RXE-27 / RXO-20.
    amount_field, units_field, text_field, reason_field = (3, 5, 7, 27) if rxe else (2, 4, 7, 20)
    dosage: dict[str, Any] = {}
    instructions = " ".join(
        t
        for t in (
            component_of(r, msg.seps, 2) or component_of(r, msg.seps, 1)
            for r in order.repetitions(text_field)
        )
        if t
    )
    if instructions:
        dosage["text"] = instructions
    timing = _timing(msg, order, tz)
    if timing:
        dosage["timing"] = timing
    route = _route(msg, order)
    if route:
        dosage["route"] = route
    dose = _quantity(order.value(amount_field), order.get(units_field), msg, order, amount_field)
    if dose:
        dosage["doseAndRate"] = [{"doseQuantity": dose}]
    if dosage:
        resource["dosageInstruction"] = [dosage]
    reasons = [c for c in (codeable_concept(r, msg) for r in order.repetitions(reason_field) if r) if c]
    if reasons:
        resource["reasonCode"] = reasons
    if rxe:
        dispense: dict[str, Any] = {}
        quantity = _quantity(order.value(10), order.get(11), msg, order, 10)
        if quantity:
            dispense["quantity"] = quantity
        refills = order.value(12).strip()
        if refills.isdigit():
            dispense["numberOfRepeatsAllowed"] = int(refills)
        if dispense:
            resource["dispenseRequest"] = dispense
    return resource


def _dispense(
    msg: Message,
    rxd: Segment,
    key: str,
    n: int,
    request_id: str | None,
    patient_id: str,
    tz: ZoneInfo,
) -> dict[str, Any]:
    concept = required_concept(rxd, 2, msg, "dispense give code")
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "id": deterministic_id(
            "MedicationDispense", msg.msh.value(4), key, rxd.value(7), rxd.value(1), str(n)
        ),
        "status": "completed",
        "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if rxd.value(7):
        resource["identifier"] = [{"value": rxd.value(7)}]
    if request_id:
        resource["authorizingPrescription"] = [{"reference": f"MedicationRequest/{request_id}"}]
    quantity = _quantity(rxd.value(4), rxd.get(5), msg, rxd, 4)
    if quantity:
        resource["quantity"] = quantity
    handed = to_fhir_datetime(rxd.value(3), tz, segment="RXD", field=3)
    if handed:
        resource["whenHandedOver"] = handed
    route = _route(msg, rxd)
    if route:
        resource["dosageInstruction"] = [{"route": route}]
    return resource


def _administration(
    msg: Message,
    rxa: Segment,
    key: str,
    n: int,
    request_id: str | None,
    patient_id: str,
    tz: ZoneInfo,
) -> dict[str, Any]:
    concept = required_concept(rxa, 5, msg, "administered code")
    start = required_datetime(rxa, 3, msg, tz, "administration time")
    end = to_fhir_datetime(rxa.value(4), tz, segment="RXA", field=4)
    resource: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "id": deterministic_id(
            "MedicationAdministration", msg.msh.value(4), key, rxa.value(1), rxa.value(2), str(n)
        ),
        "status": _ADMINISTRATION_STATUS.get(rxa.value(20).upper(), "completed"),
        "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if end and end != start:
        resource["effectivePeriod"] = {"start": start, "end": end}
    else:
        resource["effectiveDateTime"] = start
    if request_id:
        resource["request"] = {"reference": f"MedicationRequest/{request_id}"}
    dosage: dict[str, Any] = {}
    dose = _quantity(rxa.value(6), rxa.get(7), msg, rxa, 6)
    if dose and rxa.value(6).strip() != "999":  # 999 means "amount unknown" (HL7 RXA-6)
        dosage["dose"] = dose
    route = _route(msg, rxa)
    if route:
        dosage["route"] = route
    if dosage:
        resource["dosage"] = dosage
    return resource
