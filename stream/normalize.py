"""HL7 v2 message → validated FHIR R4 resources: the normalizer's pure core.

`normalize_hl7` takes the raw text and returns the patient id and the resources as FHIR
JSON, each validated with fhir.resources (R4B models). It has no clock, client or
settings: the handler in `stream.app` supplies the time zone.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from kernel.errors import MappingError, UnsupportedMessageError
from kernel.events import SUPPORTED_HL7_EVENTS, deterministic_id
from kernel.hl7v2.parser import Message, check_header, parse_message
from kernel.quality import (
    DROPPED_CONTENT,
    INVALID_ELEMENT,
    REPEATED_IDENTIFIER,
    DataQualityIssue,
    collecting,
    is_collecting,
    kept,
    report_issue,
    tolerate,
)
from stream.adt import (
    ENCOUNTER_STATUS,
    MERGE_EVENTS,
    encounter_status_for,
    map_allergies,
    map_coverages,
    map_death_cause,
    map_diagnoses,
    map_encounter,
    map_merge,
    map_patient,
    map_procedures,
)
from stream.coverage import unmapped
from stream.errors import InvalidResource
from stream.genomics import variants
from stream.imaging import link_reports, study_uids
from stream.mdm import map_document
from stream.orders import map_service_requests, map_specimens, order_groups, order_keys, service_request_id
from stream.oru import map_observations, map_reports
from stream.pharmacy import map_medications
from stream.ppr import map_problems
from stream.siu import SIU_EVENTS, map_appointment
from stream.validation import validate
from stream.vxu import map_immunizations


@dataclass(frozen=True, slots=True)
class Normalized:
    """The outcome of normalizing one message.

    ``also`` holds records for other patients the message changes (the retired patient of a
    merge), each as (patient id, resources), published under that patient's key.
    ``unmapped`` counts the segments and fields no mapping read (`stream.coverage`);
    ``issues`` are the data-quality problems the message converted despite (`kernel.quality`).
    """

    patient_id: str
    message_type: str
    control_id: str
    sender: str
    resources: list[dict[str, Any]]
    also: tuple[tuple[str, list[dict[str, Any]]], ...] = ()
    unmapped: dict[str, int] = field(default_factory=dict)
    issues: tuple[DataQualityIssue, ...] = ()


def normalize_hl7(text: str, *, tz: ZoneInfo, strict: bool = False) -> Normalized:
    """Parse, map and validate one HL7 v2 message, converting every part that can be.

    Only a message that cannot be parsed or attributed is refused: framing, MSH, control id
    or type, no patient identity. Narrower problems (an unknown value type, a malformed
    timestamp, a repeated order number, an element FHIR rejects) become data-quality issues
    on the result (`kernel.quality`), each element kept in the most faithful form FHIR
    allows, or left out when there is none. With ``strict`` (an interface analyst's check),
    the first such problem refuses the message instead.

    Raises:
        Hl7ParseError: unreadable message.
        UnsupportedMessageError: a message type the normalizer does not map.
        MappingError: no patient identity, or a Patient FHIR rejects even without its
            invalid elements (field location included); with ``strict``, any problem.
    """
    msg = parse_message(text)
    check_header(msg)
    mapper = _MAPPERS.get((msg.message_code, msg.trigger_event))
    if mapper is None:
        raise UnsupportedMessageError(
            f"message type {msg.message_type} is not supported",
            code=200,
            segment="MSH",
            sequence=1,
            field=9,
            control_id=msg.control_id,
            reject=True,
        )
    scope: AbstractContextManager[list[DataQualityIssue]] = nullcontext([]) if strict else collecting()
    with scope as issues:
        resources = _one_per_id(mapper(msg, tz), msg)
        validated = [v for v in (_validated(r, msg, first=n == 0) for n, r in enumerate(resources)) if v]
    patient_id = str(validated[0]["id"])
    own = [r for r in validated if not _retired(r, patient_id)]
    others = tuple((str(r["id"]), [r]) for r in validated if _retired(r, patient_id))
    return Normalized(
        patient_id=patient_id,
        message_type=msg.message_type,
        control_id=msg.control_id,
        sender=msg.sending_system,
        resources=own,
        also=others,
        unmapped=unmapped(msg),
        issues=tuple(issues),
    )


# Resources whose id is the clinical fact itself (the patient's allergy to X, problem Y, the
# specimen with number Z, the dose of vaccine V given at T): a second mention in one message
# is the same fact, and the later mention wins, as it would in the next message.
_SAME_FACT = frozenset({"AllergyIntolerance", "Condition", "Immunization", "Specimen"})


def _one_per_id(resources: list[dict[str, Any]], msg: Message) -> list[dict[str, Any]]:
    """One resource per id: exact repeats are dropped, same-fact mentions merged (last wins).

    Two different resources of another type with one id would let one silently overwrite
    the other: the later one gets an id of its own (the id and its occurrence, so a replay
    gives the same ids) and a repeated-identifier issue.
    """
    by_key: dict[tuple[str, str], int] = {}
    out: list[dict[str, Any]] = []
    for resource in resources:
        key = (resource["resourceType"], resource["id"])
        at = by_key.get(key)
        if at is None:
            by_key[key] = len(out)
            out.append(resource)
        elif out[at] != resource:
            if key[0] in _SAME_FACT:
                out[at] = resource
                continue
            error = MappingError(
                f"two different {key[0]} resources derive from the same source identifiers",
                code=205,
                control_id=msg.control_id,
            )
            tolerate(error, REPEATED_IDENTIFIER, location=key[0])
            n = 1
            while (key[0], deterministic_id(key[0], key[1], str(n))) in by_key:
                n += 1
            renamed = {**resource, "id": deterministic_id(key[0], key[1], str(n))}
            by_key[(key[0], renamed["id"])] = len(out)
            out.append(renamed)
    return out


def _retired(resource: dict[str, Any], survivor: str) -> bool:
    return bool(resource["resourceType"] == "Patient" and resource["id"] != survivor)


_REPAIRS = 8  # elements left out of one resource before it is given up


def _validated(resource: dict[str, Any], msg: Message, *, first: bool) -> dict[str, Any] | None:
    """The resource once fhir.resources accepts it; the resource itself (plain JSON) is what is
    published. Each element FHIR rejects is left out with an invalid-element issue; a resource
    still invalid after that is dropped with an error issue, except the message's Patient
    (``first``), which refuses the message: nothing could be attributed without it.

    Serializing the validated model back (``model_dump``) cost more than validating it (60 %
    of the normalizer's time), and the mappers already build plain JSON: what was validated
    is exactly what goes out. `stream.validation` remembers verdicts for repeated content.

    Raises:
        MappingError: the Patient cannot be made valid, or no conversion is collecting.
    """
    kind = resource["resourceType"]
    for _ in range(_REPAIRS):
        try:
            validate(resource)
            return resource
        except InvalidResource as exc:
            error = MappingError(str(exc), code=102, control_id=msg.control_id)
            repaired = _without(resource, exc.path) if is_collecting() else None
            if repaired is None:
                if first or not is_collecting():
                    raise error from None
                location = f"{kind}.{exc.path}".rstrip(".")
                tolerate(error, DROPPED_CONTENT, severity="error", location=location)
                return None
            report_issue(
                INVALID_ELEMENT, f"{kind}.{exc.path}", f"{kind}.{exc.path} fails FHIR R4 validation; left out"
            )
            resource = repaired
    error = MappingError(f"{kind} has too many invalid elements", code=102, control_id=msg.control_id)
    if first:
        raise error
    tolerate(error, DROPPED_CONTENT, severity="error", location=kind)
    return None


def _without(resource: dict[str, Any], path: str) -> dict[str, Any] | None:
    """A copy of ``resource`` without the element at ``path`` (``code.coding.0.code``); None
    when the path does not lead to an element that may go (the id, the type, or nowhere)."""
    steps = [int(p) if p.isdigit() else p for p in path.split(".") if p]
    if not steps or steps[0] in ("id", "resourceType"):
        return None
    copy = deepcopy(resource)
    node: Any = copy
    for step in steps[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    last = steps[-1]
    if isinstance(node, dict) and last in node:
        del node[last]
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node.pop(last)
    else:
        return None
    return copy


def _gather(*builds: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The resources of each mapping in turn; one that fails is an error issue, not a refusal."""
    return [resource for build in builds for resource in kept(build, "") or []]


def _encounter(
    msg: Message, patient_id: str, tz: ZoneInfo, *, status: str, infer: bool
) -> list[dict[str, Any]]:
    return _gather(
        lambda: [e] if (e := map_encounter(msg, patient_id, tz, status=status, infer=infer)) else []
    )


def _adt(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Every ADT event: Patient (with NK1 contacts and PD1 providers); the visit's Encounter;
    AL1, DG1, PR1, IN1, PDA and OBX content; merges."""
    patient = map_patient(msg)
    pid = patient["id"]
    retired = map_merge(msg, patient) if msg.trigger_event in MERGE_EVENTS else None
    if retired is not None:
        patient["link"] = [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]
        return [patient, retired]
    status = encounter_status_for(msg)
    infer = ENCOUNTER_STATUS.get(msg.trigger_event) == "from-dates"
    encounter = _encounter(msg, pid, tz, status=status, infer=infer) if status else []
    enc = encounter[0]["id"] if encounter else None
    return [
        patient,
        *encounter,
        *_gather(
            lambda: map_allergies(msg, pid, tz),
            lambda: map_diagnoses(msg, pid, enc, tz),
            lambda: map_death_cause(msg, pid),
            lambda: map_procedures(msg, pid, enc, tz),
            lambda: map_coverages(msg, pid, tz),
            lambda: map_observations(msg, pid, enc, tz, category=None),
        ),
    ]


def _oru_r01(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Results (ORU^R01, OUL^R22): Patient, Encounter, Specimens, the orders (ServiceRequest),
    Observations and one DiagnosticReport per OBR, based on its order."""
    patient = map_patient(msg)
    pid = patient["id"]
    encounter = _encounter(msg, pid, tz, status="unknown", infer=True)
    enc = encounter[0]["id"] if encounter else None
    specimens, links = map_specimens(msg, pid, tz)
    requests = _gather(lambda: map_service_requests(msg, pid, enc, tz, specimens=links))
    observations = map_observations(msg, pid, enc, tz, narrative=True)
    reports = map_reports(msg, pid, enc, observations, tz)
    keyed = zip(order_keys(msg), order_groups(msg), strict=True)
    obr_groups = [(key, obr) for key, (_, obr, _) in keyed if obr is not None]
    for report, (key, obr) in zip(reports, obr_groups, strict=False):
        report["basedOn"] = [{"reference": f"ServiceRequest/{service_request_id(msg, key)}"}]
        linked = links.get(msg.position(obr))
        if linked:
            report["specimen"] = [{"reference": f"Specimen/{i}"} for i in linked]
    studies = link_reports(reports, study_uids(msg))  # imaging reports name their DICOM study
    found = variants(observations)  # genetic result lines → one variant Observation each
    return [patient, *encounter, *specimens, *requests, *observations, *found, *reports, *studies]


def _orders(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Orders and pharmacy (ORM, OML, OMG, RDE, RDS, RAS, OMP): Patient, Encounter, Specimens,
    ServiceRequests, medication requests/dispenses/administrations, and the AL1, DG1, PR1,
    IN1 and OBX content the order carries."""
    patient = map_patient(msg)
    pid = patient["id"]
    encounter = _encounter(msg, pid, tz, status="unknown", infer=True)
    enc = encounter[0]["id"] if encounter else None
    specimens, links = map_specimens(msg, pid, tz)
    return [
        patient,
        *encounter,
        *specimens,
        *_gather(
            lambda: map_service_requests(msg, pid, enc, tz, specimens=links),
            lambda: map_medications(msg, pid, enc, tz),
            lambda: map_allergies(msg, pid, tz),
            lambda: map_diagnoses(msg, pid, enc, tz),
            lambda: map_procedures(msg, pid, enc, tz),
            lambda: map_coverages(msg, pid, tz),
            lambda: map_death_cause(msg, pid),
            lambda: map_observations(msg, pid, enc, tz, category=None),
        ),
    ]


def _siu(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Scheduling: Patient, the visit's Encounter when PV1 is sent, and the Appointment."""
    patient = map_patient(msg)
    encounter = _encounter(msg, patient["id"], tz, status="planned", infer=True)
    return [patient, *encounter, *_gather(lambda: [map_appointment(msg, patient["id"], tz)])]


def _mdm(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    patient = map_patient(msg)
    encounter = _encounter(msg, patient["id"], tz, status="unknown", infer=True)
    enc = encounter[0]["id"] if encounter else None
    return [patient, *encounter, *_gather(lambda: [map_document(msg, patient["id"], enc, tz)])]


def _vxu(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    patient = map_patient(msg)
    pid = patient["id"]
    encounter = _encounter(msg, pid, tz, status="unknown", infer=True)
    enc = encounter[0]["id"] if encounter else None
    return [
        patient,
        *encounter,
        *_gather(
            lambda: map_immunizations(msg, pid, enc, tz),
            lambda: map_observations(msg, pid, enc, tz, category=None),
        ),
    ]


def _ppr(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    patient = map_patient(msg)
    return [patient, *_gather(lambda: map_problems(msg, patient["id"], tz))]


_MAPPERS: dict[tuple[str, str], Callable[[Message, ZoneInfo], list[dict[str, Any]]]] = {
    **{("ADT", event): _adt for event in ENCOUNTER_STATUS},
    ("ORU", "R01"): _oru_r01,
    ("OUL", "R22"): _oru_r01,
    ("OUL", "R23"): _oru_r01,
    ("OUL", "R24"): _oru_r01,
    **{("MDM", f"T{n:02d}"): _mdm for n in range(1, 12)},
    ("VXU", "V04"): _vxu,
    **{("PPR", f"PC{n}"): _ppr for n in (1, 2, 3)},
    **{
        key: _orders
        for key in (
            ("ORM", "O01"),
            ("OML", "O21"),
            ("OML", "O33"),
            ("OMG", "O19"),
            ("RDE", "O11"),
            ("RDE", "O25"),
            ("RDS", "O13"),
            ("RAS", "O17"),
            ("OMP", "O09"),
        )
    },
    **{("SIU", event): _siu for event in SIU_EVENTS},
}
if set(_MAPPERS) != SUPPORTED_HL7_EVENTS:  # pragma: no cover - a programming error caught at import
    raise RuntimeError("kernel.events.SUPPORTED_HL7_EVENTS and the mappers disagree")
