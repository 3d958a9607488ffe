"""Critical laboratory values: potassium ≥ 6.0 mmol/L (LOINC 2823-3) for now.

Pure functions over FHIR Observation JSON. The alert id is derived from the rule, its
version and the Observation id and value, so the same result delivered twice yields
the same alert id (consumers dedupe on it) while a corrected value yields a new one.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from stream.events import Alert, FhirRecord, deterministic_id

RULE_ID = "critical-lab-potassium"
RULE_VERSION = "1.0.0"
POTASSIUM_LOINC = {"2823-3", "6298-4"}  # serum/plasma, blood
LOINC = "http://loinc.org"
# mmol/L and mEq/L are numerically equal for a monovalent ion such as K+.
_UNITS = {"mmol/l", "meq/l"}
CITATION = (
    "Kost GJ. Critical limits for urgent clinician notification at US medical centers. "
    "JAMA 1990;263(5):704-707 (survey of laboratory critical limits; threshold set by local policy, "
    "CLINSTREAM_CDS__POTASSIUM_CRITICAL_HIGH)."
)


def _is_potassium(obs: dict[str, Any]) -> bool:
    return any(
        c.get("system") == LOINC and c.get("code") in POTASSIUM_LOINC
        for c in obs.get("code", {}).get("coding", [])
    )


def potassium_mmol_per_l(obs: dict[str, Any]) -> Decimal | None:
    """The value in mmol/L, or None when absent or in a unit we do not know how to read."""
    q = obs.get("valueQuantity")
    if not q or "value" not in q or q.get("comparator") in ("<", "<="):
        return None
    unit = str(q.get("code") or q.get("unit") or "").strip().lower()
    if unit not in _UNITS:
        return None
    return Decimal(str(q["value"]))


def evaluate(record: FhirRecord, *, threshold: Decimal, now: datetime) -> list[Alert]:
    """Alerts raised by one normalized record."""
    alerts: list[Alert] = []
    for res in record.resources:
        if res.get("resourceType") != "Observation" or not _is_potassium(res):
            continue
        if res.get("status") in ("entered-in-error", "cancelled", "registered"):
            continue
        value = potassium_mmol_per_l(res)
        if value is None or value < threshold:
            continue
        ref = f"Observation/{res['id']}"
        when = res.get("effectiveDateTime")
        alerts.append(
            Alert(
                id=deterministic_id("Alert", RULE_ID, RULE_VERSION, ref, str(value)),
                patient_id=record.patient_id,
                rule_id=RULE_ID,
                rule_version=RULE_VERSION,
                severity="critical",
                summary=f"Critical potassium {value} mmol/L (≥ {threshold})",
                detail=(
                    f"Potassium {value} mmol/L"
                    + (f" at {when}" if when else "")
                    + f" is at or above the critical threshold of {threshold} mmol/L. "
                    "Verify (haemolysis?), check ECG, treat hyperkalaemia per local protocol."
                ),
                evidence=[ref],
                citation=CITATION,
                effective=datetime.fromisoformat(when) if when and len(when) > 10 else None,
                raised_at=now,
                trace_id=record.envelope.trace_id,
            )
        )
    return alerts
