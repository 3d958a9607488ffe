"""Genetic test results in HL7 v2 ORU → FHIR variant Observations (pure).

Genetic results arrive as OBX lines coded with the LOINC terms of the HL7 genomics
reporting guide (gene studied, DNA and amino acid change in HGVS, allelic state, clinical
significance ...). Each line stays an Observation as sent; each variant the lines describe
also becomes one Observation with the variant profile of the genomics reporting IG
(code 69548-6 with those lines as components, ``derivedFrom`` them), so a variant is one
searchable fact: "Genetic variant assessment Present: Gene studied BRCA1, DNA change
c.68_69delAG, ...". A new variant starts where a term repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kernel.events import deterministic_id
from kernel.hl7v2.datatypes import LOINC
from stream.oru import OBSERVATION_CATEGORY, V2_0074

VARIANT_PROFILE = "http://hl7.org/fhir/uv/genomics-reporting/StructureDefinition/variant"
VARIANT_CODE = "69548-6"
GENOMIC_TERMS = {
    "69548-6": "Genetic variant assessment",
    "48018-6": "Gene studied [ID]",
    "81290-9": "Genomic DNA change (gHGVS)",
    "48004-6": "DNA change (c.HGVS)",
    "48005-3": "Amino acid change (pHGVS)",
    "53034-5": "Allelic state",
    "51958-7": "Transcript reference sequence [ID]",
    "48002-0": "Genomic source class",
    "53037-8": "Genetic variation clinical significance",
    "81252-9": "Discrete genetic variant",
    "48013-7": "Genomic reference sequence [ID]",
    "62374-4": "Human reference sequence assembly version",
    "48019-4": "DNA change type",
    "48001-2": "Cytogenetic (chromosome) location",
}

Resource = dict[str, Any]


def _loinc(observation: Resource) -> str | None:
    for coding in (observation.get("code") or {}).get("coding", []):
        if coding.get("system") == LOINC and coding.get("code") in GENOMIC_TERMS:
            return str(coding["code"])
    return None


def _value(observation: Resource) -> dict[str, Any]:
    for key in ("valueCodeableConcept", "valueString", "valueQuantity", "valueInteger", "valueBoolean"):
        if key in observation:
            return {key: observation[key]}
    return {}


def variants(observations: Sequence[Resource]) -> list[Resource]:
    """The variant Observations the genetic result lines among ``observations`` describe.

    The lines themselves are marked with the genetics diagnostic section (v2-0074 GE).
    """
    groups: list[list[tuple[str, Resource]]] = []
    for obs in observations:
        code = _loinc(obs) if obs.get("resourceType") == "Observation" else None
        if code is None:
            continue
        category = {"coding": [{"system": V2_0074, "code": "GE", "display": "Genetics"}]}
        if category not in obs.setdefault("category", []):
            obs["category"].append(category)
        if not groups or any(c == code for c, _ in groups[-1]):
            groups.append([])
        groups[-1].append((code, obs))
    out = []
    for group in groups:
        if len(group) < 2 and group[0][0] != VARIANT_CODE:
            continue
        first = group[0][1]
        assessment = next((o for c, o in group if c == VARIANT_CODE), None)
        variant: Resource = {
            "resourceType": "Observation",
            "id": deterministic_id("Variant", str(first["id"])),
            "meta": {"profile": [VARIANT_PROFILE]},
            "status": first.get("status", "final"),
            "category": [
                {
                    "coding": [
                        {
                            "system": OBSERVATION_CATEGORY,
                            "code": "laboratory",
                        }
                    ]
                },
                {"coding": [{"system": V2_0074, "code": "GE", "display": "Genetics"}]},
            ],
            "code": {
                "coding": [{"system": LOINC, "code": VARIANT_CODE, "display": GENOMIC_TERMS[VARIANT_CODE]}]
            },
            "subject": dict(first["subject"]),
            "derivedFrom": [{"reference": f"Observation/{o['id']}"} for _, o in group],
            "component": [
                {"code": o["code"], **_value(o)} for c, o in group if c != VARIANT_CODE and _value(o)
            ],
        }
        variant.update(
            _value(assessment)
            if assessment
            else {
                "valueCodeableConcept": {
                    "coding": [{"system": LOINC, "code": "LA9633-4", "display": "Present"}]
                }
            }
        )
        for key in ("effectiveDateTime", "issued", "encounter"):
            if key in first:
                variant[key] = first[key]
        out.append(variant)
    return out
