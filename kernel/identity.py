"""One patient, one key: linking a FHIR Patient to the key its HL7 v2 messages get.

Pure functions. HL7 v2 messages are keyed by `kernel.events.patient_key` of (assigning
authority, identifier) from PID-3. A FHIR Patient carries the same identifier as an
``Identifier`` with a ``system`` URI. Its authority is found as follows:

1. the system named in the ``CLINSTREAM_NORMALIZER__PATIENT_AUTHORITIES`` map
   (e.g. ``{"http://mercy.example/mrn": "MERCY"}``);
2. else ``assigner.display`` (the HL7 namespace, as our own HL7 mapping writes it);
3. else the OID of an ``urn:oid:`` system (the HL7 universal id, CX.4.2).

Only medical record numbers are linked: identifiers typed MR, or untyped ones whose system
is in the configured map. The FHIR record is then published under the HL7 key, so both
sources of one patient share a partition, a Milvus partition and a timeline, and the
normalized copy of the FHIR Patient gets a ``seealso`` link to ``Patient/<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernel.events import patient_key

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def authority_of(identifier: Mapping[str, Any], authorities: Mapping[str, str]) -> str | None:
    """The HL7 assigning authority of a FHIR MRN identifier, or None when it is not one."""
    system = identifier.get("system")
    configured = authorities.get(system) if isinstance(system, str) else None
    if configured:
        return configured
    if not _is_mrn(identifier):
        return None
    assigner = identifier.get("assigner")
    if isinstance(assigner, Mapping) and isinstance(assigner.get("display"), str) and assigner["display"]:
        return str(assigner["display"])
    if isinstance(system, str) and system.startswith("urn:oid:"):
        return system.removeprefix("urn:oid:")
    return None


def _is_mrn(identifier: Mapping[str, Any]) -> bool:
    kind = identifier.get("type")
    codings = kind.get("coding", []) if isinstance(kind, Mapping) else []
    return any(isinstance(c, Mapping) and c.get("code") == "MR" for c in codings)


def hl7_key(patient: Mapping[str, Any], authorities: Mapping[str, str]) -> str | None:
    """The key HL7 v2 messages about this FHIR Patient get, from its first linkable MRN."""
    for identifier in patient.get("identifier", []) or []:
        if not isinstance(identifier, Mapping):
            continue
        value = identifier.get("value")
        authority = authority_of(identifier, authorities)
        if authority and isinstance(value, str) and value.strip():
            return patient_key(authority, value)
    return None


def link(patient: dict[str, Any], key: str) -> None:
    """Add a ``seealso`` link from a FHIR Patient to the HL7-keyed Patient (once)."""
    if patient.get("id") == key:
        return
    target = {"other": {"reference": f"Patient/{key}"}, "type": "seealso"}
    links = patient.setdefault("link", [])
    if target not in links:
        links.append(target)


def resolve_patient(patient_id: str) -> str:
    """The stream's patient key for a FHIR Patient id or an ``authority|identifier``."""
    if "|" in patient_id:
        authority, _, identifier = patient_id.partition("|")
        return patient_key(authority, identifier)
    return patient_id
