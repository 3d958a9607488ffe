"""The Synthea patients of the corpora as a live feed would send them: one record per encounter.

Shared by `bench/alerts.py` (alert burden) and the rule tests, so both replay the same feed.
Each patient bundle goes through the FHIR normalizer (`stream.fhir_input.normalize_fhir`);
its resources are then grouped by the encounter they name and the groups ordered by their
earliest clinical time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kernel.events import Envelope, FhirInbound, FhirRecord
from stream.fhir_input import normalize_fhir


@dataclass(frozen=True, slots=True)
class Visit:
    """One encounter's record and its newest clinical time (None: it carries no dated result)."""

    record: FhirRecord
    at: datetime | None


def _when(res: dict[str, Any]) -> str:
    return str(res.get("effectiveDateTime") or res.get("authoredOn") or res.get("onsetDateTime") or "")


def _by_encounter(resources: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for res in resources:
        ref = (res.get("encounter") or res.get("context") or {}).get("reference", "")
        groups.setdefault(ref, []).append(res)
    return sorted(groups.values(), key=lambda g: min((_when(r) for r in g if _when(r)), default=""))


def synthea_inbound(path: Path) -> FhirInbound:
    """The Synthea transaction Bundle at ``path`` as the FHIR ingress would publish it."""
    bundle = json.loads(path.read_text(encoding="utf-8-sig"))
    entries = [e for e in bundle["entry"] if "resource" in e]
    return FhirInbound(
        interaction="transaction",
        resources=[e["resource"] for e in entries],
        full_urls=[e.get("fullUrl") for e in entries],
    )


def synthea_feed(path: Path, received_at: datetime) -> list[list[Visit]]:
    """Each patient of the bundle at ``path`` as a list of visits, oldest first."""
    patients = []
    for group in normalize_fhir(synthea_inbound(path)):
        visits = []
        for n, resources in enumerate(_by_encounter(group.resources)):
            envelope = Envelope(
                source_system="SYNTHEA",
                source_message_id=f"{path.stem}-{n}",
                content_hash="-",
                received_at=received_at,
                trace_id=f"{path.stem}-{n}",
            )
            record = FhirRecord(envelope=envelope, patient_id=group.patient_id, resources=resources)
            times = [
                datetime.fromisoformat(r["effectiveDateTime"]) for r in resources if "effectiveDateTime" in r
            ]
            visits.append(Visit(record, max(times, default=None)))
        patients.append(visits)
    return patients
