"""FHIR input (`ehr.inbound.fhir.v1`) → normalized records (`ehr.fhir.v1`), one per patient.

Pure functions. Resources keep the EHR's ids (they are needed for write-back). Within a
transaction, ``urn:uuid:`` references are rewritten to ``Type/id`` using the entries'
fullUrls. Code systems written as OIDs or v2 names are rewritten to their canonical URIs
(LOINC, SNOMED CT, RxNorm, ICD-10(-CM), UCUM), and quantities get their UCUM code.
Resources are grouped by the patient they are about (under the HL7 patient key when the
Patient's MRN links to one, `kernel.identity`); resources about no patient (Organization,
Practitioner…) travel with the record's patient, or in a record of their own with an
empty patient id.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernel.events import FhirInbound
from kernel.identity import hl7_key, link
from kernel.units import UCUM, ucum_code

CANONICAL_SYSTEMS = {
    "urn:oid:2.16.840.1.113883.6.1": "http://loinc.org",
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "urn:oid:2.16.840.1.113883.6.96": "http://snomed.info/sct",
    "SCT": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "urn:oid:2.16.840.1.113883.6.88": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "urn:oid:2.16.840.1.113883.6.90": "http://hl7.org/fhir/sid/icd-10-cm",
    "urn:oid:2.16.840.1.113883.6.3": "http://hl7.org/fhir/sid/icd-10",
    "urn:oid:2.16.840.1.113883.6.8": "http://unitsofmeasure.org",
}
_PATIENT_ELEMENTS = ("subject", "patient", "beneficiary")


@dataclass(frozen=True, slots=True)
class PatientGroup:
    """The resources of one normalized record."""

    patient_id: str  # "" when no resource names a patient
    resources: list[dict[str, Any]]


def _walk(node: Any, uuid_map: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _walk(v, uuid_map) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in uuid_map:
            out["reference"] = uuid_map[ref]
        system = out.get("system")
        if isinstance(system, str) and system in CANONICAL_SYSTEMS and ("code" in out or "value" in out):
            out["system"] = CANONICAL_SYSTEMS[system]
        if _is_quantity(out):
            _ucum(out)
        return out
    if isinstance(node, list):
        return [_walk(item, uuid_map) for item in node]
    return node


def _is_quantity(node: dict[str, Any]) -> bool:
    value = node.get("value")
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and ("unit" in node or "code" in node)
        and node.get("system", UCUM) == UCUM
    )


def _ucum(quantity: dict[str, Any]) -> None:
    """Give a quantity its UCUM code when its code or unit is UCUM (or an unambiguous
    spelling of it, see `kernel.units`); a unit that is not UCUM is left as the EHR sent it."""
    written = quantity.get("code") or quantity.get("unit")
    code = ucum_code(written) if isinstance(written, str) else None
    if code is not None:
        quantity["system"] = UCUM
        quantity["code"] = code


def _patient_of(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id")) if resource.get("id") else None
    for element in _PATIENT_ELEMENTS:
        ref = resource.get(element)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            value: str = ref["reference"]
            if value.startswith("Patient/"):
                return value.split("/", 1)[1].split("/")[0]
            if "/Patient/" in value:
                return value.split("/Patient/", 1)[1].split("/")[0]
    return None


def normalize_fhir(
    inbound: FhirInbound, *, authorities: Mapping[str, str] | None = None
) -> list[PatientGroup]:
    """The records one inbound FHIR record becomes, in a stable order.

    A Patient whose MRN links to an HL7 assigning authority (`kernel.identity`) has its
    record, and the records of the resources about it, keyed by the HL7 patient key.
    """
    uuid_map = {
        url: f"{r['resourceType']}/{r['id']}"
        for url, r in zip(inbound.full_urls, inbound.resources, strict=False)
        if url and url.startswith("urn:uuid:") and r.get("id")
    }
    resources = [_walk(copy.deepcopy(r), uuid_map) for r in inbound.resources]
    keys: dict[str, str] = {}
    for resource in resources:
        if resource.get("resourceType") == "Patient" and resource.get("id"):
            key = hl7_key(resource, authorities or {})
            if key is not None:
                keys[str(resource["id"])] = key
                link(resource, key)
    groups: dict[str, list[dict[str, Any]]] = {}
    loose: list[dict[str, Any]] = []
    for resource in resources:
        patient = _patient_of(resource)
        if patient is not None:
            patient = keys.get(patient, patient)
        if patient is None:
            loose.append(resource)
        else:
            groups.setdefault(patient, []).append(resource)
    if loose:
        if groups:
            groups[next(iter(groups))].extend(loose)
        else:
            groups[""] = loose
    return [PatientGroup(patient, items) for patient, items in groups.items()]
