"""FHIR resources → text chunks a clinician would recognise, with the scalar fields to filter on.

Pure functions. A chunk's id is derived from its resource id and position, so an update
of the resource overwrites its chunks and a replay changes nothing; a resource marked
``entered-in-error`` yields a deletion instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from stream.events import DeadLetter, FhirRecord, deterministic_id

_INTERPRETATION = {
    "H": "high",
    "HH": "critical high",
    "HU": "very high",
    "L": "low",
    "LL": "critical low",
    "LU": "very low",
    "A": "abnormal",
    "AA": "critical abnormal",
    "N": "normal",
}


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of retrieval."""

    id: str
    patient_id: str
    resource_id: str  # "Observation/<id>"
    resource_type: str
    text: str
    effective: int  # epoch seconds, 0 when unknown
    effective_text: str  # as written in the resource


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """What one record changes in the index."""

    upserts: list[Chunk]
    deletes: list[str]


def chunk_id(resource_id: str, n: int = 0) -> str:
    """Deterministic chunk id."""
    return deterministic_id("Chunk", resource_id, str(n))


def plan_record(record: FhirRecord) -> ChunkPlan:
    """Chunks to upsert and chunk ids to delete for one normalized record."""
    upserts: list[Chunk] = []
    deletes: list[str] = []
    for resource in record.resources:
        if resource.get("resourceType") != "Observation":
            continue
        ref = f"Observation/{resource['id']}"
        if resource.get("status") in ("entered-in-error", "cancelled"):
            deletes.append(chunk_id(ref))
            continue
        when = str(resource.get("effectiveDateTime", ""))
        upserts.append(
            Chunk(
                id=chunk_id(ref),
                patient_id=record.patient_id,
                resource_id=ref,
                resource_type="Observation",
                text=render_observation(resource),
                effective=_epoch(when),
                effective_text=when,
            )
        )
    return ChunkPlan(upserts, deletes)


def concept_text(concept: dict[str, Any] | None) -> str:
    """Best human label of a CodeableConcept."""
    if not concept:
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for c in concept.get("coding", []):
        if c.get("display"):
            return str(c["display"])
    for c in concept.get("coding", []):
        if c.get("code"):
            return str(c["code"])
    return ""


def _number(value: Any) -> str:
    text = format(value, "f") if isinstance(value, float) else str(value)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _quantity(q: dict[str, Any]) -> str:
    parts = [q.get("comparator", ""), _number(q["value"]) if "value" in q else "", q.get("unit", "")]
    return " ".join(p for p in (parts[0] + parts[1], parts[2]) if p)


def render_observation(obs: dict[str, Any]) -> str:
    """E.g. ``Potassium 6.2 mmol/L (critical high; ref 3.5-5.1) 2025-01-01 11:00``."""
    name = concept_text(obs.get("code")) or "Observation"
    if "valueQuantity" in obs:
        value = _quantity(obs["valueQuantity"])
    elif "valueString" in obs:
        value = str(obs["valueString"])
    elif "valueCodeableConcept" in obs:
        value = concept_text(obs["valueCodeableConcept"])
    elif "valueDateTime" in obs:
        value = str(obs["valueDateTime"])
    else:
        value = "(no value)"
    notes: list[str] = []
    for interp in obs.get("interpretation", []):
        for c in interp.get("coding", []):
            label = _INTERPRETATION.get(str(c.get("code", "")).upper())
            if label and label != "normal":
                notes.append(label)
    for rr in obs.get("referenceRange", [])[:1]:
        if "low" in rr and "high" in rr:
            notes.append(f"ref {_number(rr['low']['value'])}-{_number(rr['high']['value'])}")
        elif rr.get("text"):
            notes.append(f"ref {rr['text']}")
    status = obs.get("status", "final")
    if status != "final":
        notes.append(status)
    text = f"{name} {value}"
    if notes:
        text += f" ({'; '.join(notes)})"
    when = str(obs.get("effectiveDateTime", ""))
    if when:
        text += " " + when[:16].replace("T", " ")
    return text


def _epoch(when: str) -> int:
    if len(when) < 10:
        return 0
    try:
        dt = datetime.fromisoformat(when)
    except ValueError:
        return 0
    if dt.tzinfo is None:
        return int(datetime.fromisoformat(when[:10] + "T00:00:00+00:00").timestamp())
    return int(dt.timestamp())


class RecordLike(Protocol):
    """What `plan_batch` reads of a Kafka consumer record."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass
class BatchPlan:
    """What one batch of `ehr.fhir.v1` records changes in the index."""

    upserts: list[Chunk] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def plan_batch(records: Iterable[RecordLike], *, stage: str = "indexer") -> BatchPlan:
    """Chunks to upsert, chunk ids to delete and dead letters for a batch, in log order.

    A later record about the same resource wins, as it would if the records were applied
    one by one; an unreadable record becomes a dead letter and never stops the batch.
    """
    upserts: dict[str, Chunk] = {}
    deletes: dict[str, None] = {}
    letters: list[DeadLetter] = []
    for record in records:
        payload = record.value or b""
        try:
            plan = plan_record(FhirRecord.model_validate_json(payload))
        except Exception as exc:  # an unreadable record is dead-lettered, never skipped
            letters.append(
                DeadLetter.from_error(
                    exc,
                    stage=stage,
                    payload=payload,
                    source_topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=getattr(record, "key", None),
                )
            )
            continue
        for chunk in plan.upserts:
            upserts[chunk.id] = chunk
            deletes.pop(chunk.id, None)
        for cid in plan.deletes:
            upserts.pop(cid, None)
            deletes[cid] = None
    return BatchPlan(list(upserts.values()), list(deletes), letters)
