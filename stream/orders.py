"""ORC/OBR → ServiceRequest and SPM → Specimen: orders (ORM^O01, OML^O21, OMG^O19) and
the specimens of results messages.

Pure functions. A ServiceRequest's id comes from the sending facility and the order number
(filler, else placer), the same key the DiagnosticReport of its results uses, so a status
change of an order (ORC-1 SC, CA, DC) overwrites the order instead of adding another one.
Orders of medications (ORC followed by RXO/RXE) are the pharmacy mapper's business.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from kernel.events import deterministic_id
from kernel.hl7v2.datatypes import codeable_concept, concept_at, notes_after, practitioner_ref
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import Message, Segment, component_of

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# ORC-5 order status (HL7 table 0038) → ServiceRequest/MedicationRequest status.
ORDER_STATUS = {
    "A": "active",
    "CA": "revoked",
    "CM": "completed",
    "DC": "revoked",
    "ER": "entered-in-error",
    "HD": "on-hold",
    "IP": "active",
    "RP": "revoked",
    "SC": "active",
}
# ORC-1 order control (HL7 table 0119) → status, when ORC-5 does not say.
ORDER_CONTROL_STATUS = {
    "NW": "active",
    "OK": "active",
    "SN": "active",
    "XO": "active",
    "XR": "active",
    "RL": "active",
    "SC": "active",
    "RE": "active",
    "CA": "revoked",
    "CR": "revoked",
    "OC": "revoked",
    "DC": "revoked",
    "OD": "revoked",
    "DR": "revoked",
    "HD": "on-hold",
    "OH": "on-hold",
    "HR": "on-hold",
}
# Priority (OBR-5, TQ1-9, ORC-7.6; HL7 table 0485) → FHIR request priority.
PRIORITY = {"S": "stat", "A": "asap", "R": "routine", "P": "urgent", "C": "urgent", "T": "urgent"}
_MEDICATION_SEGMENTS = frozenset({"RXO", "RXE", "RXD", "RXG", "RXA"})


def order_status(orc: Segment | None) -> str:
    """Request status from ORC-5 when the sender filled it, else from ORC-1; unknown without ORC."""
    if orc is None:
        return "unknown"
    return ORDER_STATUS.get(orc.value(5).upper()) or ORDER_CONTROL_STATUS.get(orc.value(1).upper(), "active")


def order_identifiers(orc: Segment | None, detail: Segment | None, msg: Message) -> list[dict[str, Any]]:
    """Placer (ORC-2, else OBR-2) and filler (ORC-3, else OBR-3) order numbers as identifiers."""
    out: list[dict[str, Any]] = []
    for kind, orc_field, obr_field in (("PLAC", 2, 2), ("FILL", 3, 3)):
        raw = orc.get(orc_field) if orc is not None else ""
        if not component_of(raw, msg.seps, 1) and detail is not None and detail.name == "OBR":
            raw = detail.get(obr_field)
        value = component_of(raw, msg.seps, 1)
        if not value:
            continue
        ident: dict[str, Any] = {"value": value, "type": {"coding": [{"system": V2_0203, "code": kind}]}}
        namespace = component_of(raw, msg.seps, 2)
        if namespace:
            ident["assigner"] = {"display": namespace}
        out.append(ident)
    return out


def order_key(orc: Segment | None, detail: Segment | None, msg: Message, *, index: int = 0) -> str:
    """The order number that keys an order's resources: filler, else placer.

    An order without any number is keyed by the message and its position in it.
    """
    for seg, fields in (
        (orc, (3, 2)),
        (detail if detail is not None and detail.name == "OBR" else None, (3, 2)),
    ):
        if seg is None:
            continue
        for field in fields:
            value = seg.value(field)
            if value:
                return value
    return f"{msg.control_id}#{index}"


def priority_of(orc: Segment | None, detail: Segment | None, msg: Message) -> str | None:
    """TQ1-9, else OBR-5 (v2.3-2.4), else ORC-7.6."""
    tq1 = msg.first("TQ1")
    for raw in (
        tq1.value(9) if tq1 is not None else "",
        detail.value(5) if detail is not None and detail.name == "OBR" else "",
        orc.value(7, 6) if orc is not None else "",
    ):
        if raw:
            return PRIORITY.get(raw.upper())
    return None


def order_groups(msg: Message) -> list[tuple[Segment | None, Segment | None, list[Segment]]]:
    """(ORC, OBR or None, medication segments) per order, in message order.

    An ORC opens an order; the OBR after it is its detail. An OBR without its own ORC (ORU,
    older ORM) is an order of its own that shares the previous ORC's common fields.
    """
    groups: list[list[Any]] = []  # [ORC, OBR, medication segments] while they are collected
    orc: Segment | None = None
    current: list[Any] | None = None
    for seg in msg.segments:
        if seg.name == "ORC":
            orc = seg
            current = [seg, None, []]
            groups.append(current)
        elif seg.name == "OBR":
            if current is not None and current[1] is None and not current[2]:
                current[1] = seg
            else:
                current = [orc, seg, []]
                groups.append(current)
        elif seg.name in _MEDICATION_SEGMENTS and current is not None:
            current[2].append(seg)
    return [(g[0], g[1], g[2]) for g in groups]


def order_keys(msg: Message) -> list[str]:
    """The key of each of `order_groups`' orders, unique within the message.

    Senders repeat one order number on several orders of a message (two drugs under one
    ORC-2, two OBRs under one ORC); the second and later get their position appended so
    that neither overwrites the other, while the first keeps the plain number that other
    messages about the order use.
    """
    keys: list[str] = []
    seen: set[str] = set()
    for index, (orc, detail, _) in enumerate(order_groups(msg)):
        key = order_key(orc, detail, msg, index=index)
        if key in seen:
            key = f"{key}#{index}"
        seen.add(key)
        keys.append(key)
    return keys


def map_service_requests(
    msg: Message,
    patient_id: str,
    encounter_id: str | None,
    tz: ZoneInfo,
    *,
    specimens: dict[int, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """One ServiceRequest per non-medication order (ORC and/or OBR).

    ``specimens`` maps an OBR's position in ``msg.segments`` to the Specimen ids collected
    for it (see `map_specimens`).
    """
    out: list[dict[str, Any]] = []
    for key, (orc, obr, medication) in zip(order_keys(msg), order_groups(msg), strict=True):
        if medication:
            continue
        out.append(_service_request(msg, orc, obr, key, patient_id, encounter_id, tz, specimens or {}))
    return out


def _service_request(
    msg: Message,
    orc: Segment | None,
    obr: Segment | None,
    key: str,
    patient_id: str,
    encounter_id: str | None,
    tz: ZoneInfo,
    specimens: dict[int, list[str]],
) -> dict[str, Any]:
    resource = order_request(
        "ServiceRequest", service_request_id(msg, key), msg, orc, obr, patient_id, encounter_id, tz
    )
    if orc is not None and orc.value(4):
        resource["requisition"] = {"value": orc.value(4)}
    concept = concept_at(obr, 4, msg)
    if concept:
        resource["code"] = concept
    if obr is not None:
        reasons = [c for c in (codeable_concept(r, msg) for r in obr.repetitions(31) if r) if c]
        if reasons:
            resource["reasonCode"] = reasons
        notes = notes_after(msg, obr)
        if notes:
            resource["note"] = notes
        ids = specimens.get(msg.position(obr))
        if ids:
            resource["specimen"] = [{"reference": f"Specimen/{i}"} for i in ids]
    return resource


def order_request(
    kind: str,
    request_id: str,
    msg: Message,
    orc: Segment | None,
    detail: Segment | None,
    patient_id: str,
    encounter_id: str | None,
    tz: ZoneInfo,
    *,
    identifiers: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """What every request made from an order has (ServiceRequest, MedicationRequest): status
    and intent, placer/filler identifiers (plus ``identifiers``), encounter, authoredOn
    (ORC-9), requester (ORC-12, else OBR-16) and priority."""
    resource: dict[str, Any] = {
        "resourceType": kind,
        "id": request_id,
        "status": order_status(orc),
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    all_identifiers = [*order_identifiers(orc, detail, msg), *identifiers]
    if all_identifiers:
        resource["identifier"] = all_identifiers
    priority = priority_of(orc, detail, msg)
    if priority:
        resource["priority"] = priority
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    authored = to_fhir_datetime(orc.value(9), tz, segment="ORC", field=9) if orc is not None else None
    if authored:
        resource["authoredOn"] = authored
    obr = detail if detail is not None and detail.name == "OBR" else None
    requester_raw = (orc.get(12) if orc is not None else "") or (obr.get(16) if obr is not None else "")
    requester = practitioner_ref(requester_raw.split(msg.seps.repetition)[0], msg) if requester_raw else None
    if requester:
        resource["requester"] = requester
    return resource


def service_request_id(msg: Message, key: str) -> str:
    """The id of the ServiceRequest of the order with this key (`order_keys`), wherever the
    order appears (ORM, ORU, OML)."""
    return deterministic_id("ServiceRequest", msg.msh.value(4), key)


def map_specimens(
    msg: Message, patient_id: str, tz: ZoneInfo
) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """SPM → Specimen; and, per OBR position, the ids of the specimens that belong to it.

    Results messages carry SPM after the OBR/OBX group it belongs to (ORU^R01 2.5+), while
    specimen-oriented messages (OUL^R22, OML^O21 and O33) put SPM before the orders
    collected from it.
    """
    specimens: list[dict[str, Any]] = []
    links: dict[int, list[str]] = {}
    spm_first = msg.message_code in ("OUL", "OML")
    last_obr: int | None = None
    last_spm: str | None = None
    for pos, seg in enumerate(msg.segments):
        if seg.name == "OBR":
            last_obr = pos
            if spm_first and last_spm is not None:
                links.setdefault(pos, []).append(last_spm)
        elif seg.name == "SPM":
            specimen = _specimen(seg, msg, patient_id, tz, len(specimens))
            specimens.append(specimen)
            last_spm = specimen["id"]
            if not spm_first and last_obr is not None:
                links.setdefault(last_obr, []).append(specimen["id"])
    return specimens, links


def _specimen(spm: Segment, msg: Message, patient_id: str, tz: ZoneInfo, index: int) -> dict[str, Any]:
    seps = msg.seps
    raw_id = spm.get(2)
    # SPM-2 is an EIP (placer^filler), each an EI whose parts are subcomponents.
    placer = component_of(raw_id, seps, 1, 1)
    filler = component_of(raw_id, seps, 2, 1)
    key = filler or placer or f"{msg.control_id}#{spm.value(1) or index}"
    resource: dict[str, Any] = {
        "resourceType": "Specimen",
        "id": deterministic_id("Specimen", msg.msh.value(4), key),
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    identifiers = [
        {"value": value, "type": {"coding": [{"system": V2_0203, "code": kind}]}}
        for kind, value in (("PLAC", placer), ("FILL", filler))
        if value
    ]
    if identifiers:
        resource["identifier"] = identifiers
    concept = concept_at(spm, 4, msg)
    if concept:
        resource["type"] = concept
    collection: dict[str, Any] = {}
    collected = to_fhir_datetime(spm.value(17, 1, 1), tz, segment="SPM", field=17)
    collected_end = to_fhir_datetime(spm.value(17, 2, 1), tz, segment="SPM", field=17)
    if collected and collected_end:
        collection["collectedPeriod"] = {"start": collected, "end": collected_end}
    elif collected:
        collection["collectedDateTime"] = collected
    site = concept_at(spm, 8, msg)
    if site:
        collection["bodySite"] = site
    if collection:
        resource["collection"] = collection
    received = to_fhir_datetime(spm.value(18), tz, segment="SPM", field=18)
    if received and "T" in received:  # receivedTime is a dateTime; keep it only with a time
        resource["receivedTime"] = received
    return resource
