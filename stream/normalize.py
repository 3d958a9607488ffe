"""HL7 v2 message → validated FHIR R4 resources: the normalizer's pure core.

`normalize_hl7` takes the raw text and returns the patient id and the resources as FHIR
JSON, each validated with fhir.resources (R4B models). It has no clock, client or
settings: the handler in `stream.app` supplies the time zone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from kernel.errors import MappingError, UnsupportedMessageError
from kernel.events import SUPPORTED_HL7_EVENTS
from kernel.hl7v2.parser import Message, check_header, parse_message
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
    ``unmapped`` counts the segments and fields no mapping read (`stream.coverage`).
    """

    patient_id: str
    message_type: str
    control_id: str
    resources: list[dict[str, Any]]
    also: tuple[tuple[str, list[dict[str, Any]]], ...] = ()
    unmapped: dict[str, int] = field(default_factory=dict)


def normalize_hl7(text: str, *, tz: ZoneInfo) -> Normalized:
    """Parse, map and validate one HL7 v2 message.

    Raises:
        Hl7ParseError: unreadable message.
        UnsupportedMessageError: a message type the normalizer does not map.
        MappingError: content that cannot become valid FHIR (field location included).
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
    resources = _one_per_id(mapper(msg, tz), msg)
    validated = [validate_resource(r, msg) for r in resources]
    patient_id = str(validated[0]["id"])
    own = [r for r in validated if not _retired(r, patient_id)]
    others = tuple((str(r["id"]), [r]) for r in validated if _retired(r, patient_id))
    return Normalized(
        patient_id=patient_id,
        message_type=msg.message_type,
        control_id=msg.control_id,
        resources=own,
        also=others,
        unmapped=unmapped(msg),
    )


# Resources whose id is the clinical fact itself (the patient's allergy to X, problem Y, the
# specimen with number Z, the dose of vaccine V given at T): a second mention in one message
# is the same fact, and the later mention wins, as it would in the next message.
_SAME_FACT = frozenset({"AllergyIntolerance", "Condition", "Immunization", "Specimen"})


def _one_per_id(resources: list[dict[str, Any]], msg: Message) -> list[dict[str, Any]]:
    """One resource per id: exact repeats are dropped, same-fact mentions merged (last wins).

    Raises:
        MappingError: two different resources of another type got one id; publishing both
            would let one silently overwrite the other.
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
            if key[0] not in _SAME_FACT:
                raise MappingError(
                    f"two different {key[0]} resources derive from the same source identifiers",
                    code=205,
                    control_id=msg.control_id,
                )
            out[at] = resource
    return out


def _retired(resource: dict[str, Any], survivor: str) -> bool:
    return bool(resource["resourceType"] == "Patient" and resource["id"] != survivor)


def validate_resource(resource: dict[str, Any], msg: Message) -> dict[str, Any]:
    """Validate with fhir.resources; the resource itself (plain JSON values) is what is published.

    Serializing the validated model back (``model_dump``) cost more than validating it (60 %
    of the normalizer's time), and the mappers already build plain JSON: what was validated
    is exactly what goes out. `stream.validation` remembers verdicts for repeated content.
    """
    try:
        validate(resource)
    except InvalidResource as exc:
        raise MappingError(str(exc), code=102, control_id=msg.control_id) from None
    return resource


def _adt(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Every ADT event: Patient (with NK1 contacts and PD1 providers); the visit's Encounter;
    AL1, DG1, PR1, IN1, PDA and OBX content; merges."""
    patient = map_patient(msg)
    retired = map_merge(msg, patient) if msg.trigger_event in MERGE_EVENTS else None
    if retired is not None:
        patient["link"] = [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]
        return [patient, retired]
    status = encounter_status_for(msg)
    infer = ENCOUNTER_STATUS.get(msg.trigger_event) == "from-dates"
    encounter = map_encounter(msg, patient["id"], tz, status=status, infer=infer) if status else None
    encounter_id = encounter["id"] if encounter else None
    return (
        [patient]
        + ([encounter] if encounter else [])
        + map_allergies(msg, patient["id"], tz)
        + map_diagnoses(msg, patient["id"], encounter_id, tz)
        + map_death_cause(msg, patient["id"])
        + map_procedures(msg, patient["id"], encounter_id, tz)
        + map_coverages(msg, patient["id"], tz)
        + map_observations(msg, patient["id"], encounter_id, tz, category=None)
    )


def _oru_r01(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Results (ORU^R01, OUL^R22): Patient, Encounter, Specimens, the orders (ServiceRequest),
    Observations and one DiagnosticReport per OBR, based on its order."""
    patient = map_patient(msg)
    encounter = map_encounter(msg, patient["id"], tz, status="unknown", infer=True)
    encounter_id = encounter["id"] if encounter else None
    specimens, links = map_specimens(msg, patient["id"], tz)
    requests = map_service_requests(msg, patient["id"], encounter_id, tz, specimens=links)
    observations = map_observations(msg, patient["id"], encounter_id, tz, narrative=True)
    reports = map_reports(msg, patient["id"], encounter_id, observations, tz)
    keyed = zip(order_keys(msg), order_groups(msg), strict=True)
    obr_groups = [(key, obr) for key, (_, obr, _) in keyed if obr is not None]
    for report, (key, obr) in zip(reports, obr_groups, strict=False):
        report["basedOn"] = [{"reference": f"ServiceRequest/{service_request_id(msg, key)}"}]
        linked = links.get(msg.position(obr))
        if linked:
            report["specimen"] = [{"reference": f"Specimen/{i}"} for i in linked]
    studies = link_reports(reports, study_uids(msg))  # imaging reports name their DICOM study
    found = variants(observations)  # genetic result lines → one variant Observation each
    return (
        [patient]
        + ([encounter] if encounter else [])
        + specimens
        + requests
        + observations
        + found
        + reports
        + studies
    )


def _orders(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Orders and pharmacy (ORM, OML, OMG, RDE, RDS, RAS, OMP): Patient, Encounter, Specimens,
    ServiceRequests, medication requests/dispenses/administrations, and the AL1, DG1 and OBX
    content the order carries."""
    patient = map_patient(msg)
    encounter = map_encounter(msg, patient["id"], tz, status="unknown", infer=True)
    encounter_id = encounter["id"] if encounter else None
    specimens, links = map_specimens(msg, patient["id"], tz)
    return (
        [patient]
        + ([encounter] if encounter else [])
        + specimens
        + map_service_requests(msg, patient["id"], encounter_id, tz, specimens=links)
        + map_medications(msg, patient["id"], encounter_id, tz)
        + map_allergies(msg, patient["id"], tz)
        + map_diagnoses(msg, patient["id"], encounter_id, tz)
        + map_procedures(msg, patient["id"], encounter_id, tz)
        + map_coverages(msg, patient["id"], tz)
        + map_death_cause(msg, patient["id"])
        + map_procedures(msg, patient["id"], encounter_id, tz)
        + map_coverages(msg, patient["id"], tz)
        + map_observations(msg, patient["id"], encounter_id, tz, category=None)
    )


def _siu(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Scheduling: Patient, the visit's Encounter when PV1 is sent, and the Appointment."""
    patient = map_patient(msg)
    encounter = map_encounter(msg, patient["id"], tz, status="planned", infer=True)
    return [patient] + ([encounter] if encounter else []) + [map_appointment(msg, patient["id"], tz)]


def _mdm(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    patient = map_patient(msg)
    encounter = map_encounter(msg, patient["id"], tz, status="unknown", infer=True)
    encounter_id = encounter["id"] if encounter else None
    return (
        [patient] + ([encounter] if encounter else []) + [map_document(msg, patient["id"], encounter_id, tz)]
    )


def _vxu(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    patient = map_patient(msg)
    encounter = map_encounter(msg, patient["id"], tz, status="unknown", infer=True)
    encounter_id = encounter["id"] if encounter else None
    return (
        [patient]
        + ([encounter] if encounter else [])
        + map_immunizations(msg, patient["id"], encounter_id, tz)
        + map_observations(msg, patient["id"], encounter_id, tz, category=None)
    )


def _ppr(msg: Message, tz: ZoneInfo) -> list[dict[str, Any]]:
    patient = map_patient(msg)
    return [patient, *map_problems(msg, patient["id"], tz)]


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
