"""PPR^PC1-PC3 (problem add, update, delete) → Condition on the problem list, one per PRB.

Pure functions. The Condition id comes from PRB-4 (problem instance id), else the
problem code, so an update overwrites the problem it names. PRB-1 DE (delete) marks it
entered-in-error; PRB-14 (life cycle status) or PRB-9 (resolution date) give the
clinical status; PRB-13 the verification status.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from kernel.events import deterministic_id
from kernel.hl7v2.datatypes import concept_at
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import Message
from stream.adt import CONDITION_CATEGORY, CONDITION_CLINICAL, CONDITION_VERIFICATION

_CLINICAL = {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
_VERIFICATION = {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}


def map_problems(msg: Message, patient_id: str, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Every PRB as a problem-list Condition."""
    out: list[dict[str, Any]] = []
    for prb in msg.all("PRB"):
        concept = concept_at(prb, 3, msg)
        if concept is None:
            continue
        key = prb.value(4) or prb.value(3, 1) or prb.value(3, 2)
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": deterministic_id("Condition", patient_id, "problem", key),
            "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}],
            "code": concept,
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        resolved = to_fhir_datetime(prb.value(9), tz, segment="PRB", field=9)
        if prb.value(1).upper() == "DE":
            resource["verificationStatus"] = {
                "coding": [{"system": CONDITION_VERIFICATION, "code": "entered-in-error"}]
            }
        else:
            life = (prb.value(14, 1) or prb.value(14, 2)).strip().lower()
            clinical = life if life in _CLINICAL else ("resolved" if resolved else "active")
            resource["clinicalStatus"] = {"coding": [{"system": CONDITION_CLINICAL, "code": clinical}]}
            verification = (prb.value(13, 1) or prb.value(13, 2)).strip().lower()
            if verification in _VERIFICATION:
                resource["verificationStatus"] = {
                    "coding": [{"system": CONDITION_VERIFICATION, "code": verification}]
                }
        onset = to_fhir_datetime(prb.value(16), tz, segment="PRB", field=16)
        if onset:
            resource["onsetDateTime"] = onset
        if resolved and resource.get("clinicalStatus", {}).get("coding", [{}])[0].get("code") in (
            "resolved",
            "inactive",
            "remission",
        ):
            resource["abatementDateTime"] = resolved
        recorded = to_fhir_datetime(prb.value(7), tz, segment="PRB", field=7)
        if recorded:
            resource["recordedDate"] = recorded
        out.append(resource)
    return out
