"""FHIR resources → text chunks a clinician would recognise, with the scalar fields to filter on.

Pure functions. Every resource type the normalizer publishes is indexed (`kernel.rendering`
writes the text); notes and reports with text attachments are split at their headings,
long sections into overlapping windows. A chunk's id is derived from its resource id and
its number, so an update of the resource overwrites its chunks and a replay changes nothing.
A plan also says how many chunks each resource now has: the store removes any higher-numbered
chunk left from a longer earlier version, and all chunks of a resource that is now
``entered-in-error`` (or a cancelled observation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from kernel.events import DeadLetter, FhirRecord, deterministic_id
from kernel.rendering import TIME_FIELDS, Resource, effective_time, render

# Words per chunk window of a long note section, and the words repeated from the previous
# window so a sentence cut at the border is found whole in one of them.
WINDOW_WORDS = 180
OVERLAP_WORDS = 40
# At most this many characters of codes per chunk ("system|code" tokens, space separated).
CODES_MAX = 512
# Statuses that take a resource out of the record.
_REMOVED = {"entered-in-error"}
_REMOVED_BY_TYPE = {"Observation": {"cancelled"}}


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of retrieval, citing the resource (and version) it came from."""

    id: str
    patient_id: str
    resource_id: str  # "Observation/<id>"
    resource_type: str
    text: str
    effective: int  # epoch seconds, 0 when unknown
    effective_text: str  # as written in the resource
    chunk_no: int = 0
    encounter: str = ""  # "Encounter/<id>" when the resource names one
    codes: str = ""  # "http://loinc.org|2823-3 ..." of the resource's main concept(s)
    version: str = ""  # meta.versionId, else the source message id of the record
    section: str = ""  # the note heading the chunk is under


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """What one record changes in the index: chunks to write, and for every resource it
    touched, how many chunks it has now (the store drops chunk numbers at and above that)."""

    upserts: list[Chunk]
    keep: dict[str, int]


def chunk_id(resource_id: str, n: int = 0) -> str:
    """Deterministic chunk id."""
    return deterministic_id("Chunk", resource_id, str(n))


def plan_record(record: FhirRecord) -> ChunkPlan:
    """Chunks to upsert, and chunk counts per resource, for one normalized record.

    Raises:
        ValueError: a resource without a type or id (the record is dead-lettered).
    """
    upserts: list[Chunk] = []
    keep: dict[str, int] = {}
    for resource in record.resources:
        kind, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(kind, str) or not isinstance(rid, str) or not kind or not rid:
            raise ValueError("a resource without resourceType or id cannot be cited")
        ref = f"{kind}/{rid}"
        status = resource.get("status")
        if status in _REMOVED or status in _REMOVED_BY_TYPE.get(kind, ()):
            keep[ref] = 0
            continue
        chunks = resource_chunks(resource, record.patient_id, record.envelope.source_message_id)
        if chunks or kind in _INDEXED:
            keep[ref] = len(chunks)
            upserts.extend(chunks)
    return ChunkPlan(upserts, keep)


def resource_chunks(resource: Resource, patient_id: str, source_version: str = "") -> list[Chunk]:
    """The chunks of one resource, numbered from 0."""
    kind = str(resource.get("resourceType", ""))
    ref = f"{kind}/{resource.get('id', '')}"
    at = effective_time(resource)
    meta = resource.get("meta") or {}
    version = str(meta.get("versionId") or source_version)
    encounter, codes, effective = encounter_of(resource), codes_of(resource), epoch(at)
    sections = render(resource)
    texts: list[tuple[str, str]] = []
    title = sections[0][1] if sections else ""
    for n, (heading, text) in enumerate(sections):
        if n == 0 and not heading:
            texts.append(("", text))
            continue
        # Each window of a note repeats the note's title line, so it reads (and embeds) on its own.
        prefix = f"{title} - {heading}:" if heading else f"{title}:"
        texts.extend((heading, f"{prefix} {window}") for window in windows(text))
    return [
        Chunk(
            id=chunk_id(ref, n),
            patient_id=patient_id,
            resource_id=ref,
            resource_type=kind,
            text=text,
            effective=effective,
            effective_text=at,
            chunk_no=n,
            encounter=encounter,
            codes=codes,
            version=version,
            section=heading,
        )
        for n, (heading, text) in enumerate(texts)
    ]


def encounter_of(resource: Resource) -> str:
    """``Encounter/<id>`` the resource belongs to (``encounter``, or a note's ``context``)."""
    ref = resource.get("encounter")
    if ref is None:
        context = resource.get("context") or {}
        refs = context.get("encounter") if isinstance(context, dict) else None
        ref = refs[0] if isinstance(refs, list) and refs else None
    if resource.get("resourceType") == "Encounter":
        return f"Encounter/{resource.get('id', '')}"
    return str(ref.get("reference", "")) if isinstance(ref, dict) else ""


def windows(text: str, size: int = WINDOW_WORDS, overlap: int = OVERLAP_WORDS) -> list[str]:
    """``text`` in windows of ``size`` words, each repeating the last ``overlap`` words of the one before."""
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)] if words else []
    step = size - overlap
    return [" ".join(words[i : i + size]) for i in range(0, len(words) - overlap, step)]


_INDEXED = frozenset(TIME_FIELDS) | {"Patient"}
_CONCEPTS = ("code", "vaccineCode", "medicationCodeableConcept", "type", "appointmentType", "class")


def codes_of(resource: Resource) -> str:
    """``system|code`` of the resource's main concept(s), for exact-code filters."""
    tokens: list[str] = []
    for key in _CONCEPTS:
        concept = resource.get(key)
        if isinstance(concept, list):
            concept = concept[0] if concept else None
        if not isinstance(concept, dict):
            continue
        codings = concept.get("coding", []) if "coding" in concept else [concept]
        for c in codings:
            if isinstance(c, dict) and c.get("code"):
                tokens.append(f"{c.get('system', '')}|{c['code']}")
    out = " ".join(dict.fromkeys(tokens))
    return out[:CODES_MAX].rsplit(" ", 1)[0] if len(out) > CODES_MAX else out


def epoch(when: str) -> int:
    """Epoch seconds of a FHIR date/dateTime (a date alone: midnight UTC); 0 when unreadable."""
    if len(when) < 4:
        return 0
    text = when
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return 0
    if dt.tzinfo is None:
        return int(datetime.fromisoformat(text[:10] + "T00:00:00+00:00").timestamp())
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
    keep: dict[str, int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def removed(self) -> int:
        """Resources taken out of the index entirely."""
        return sum(1 for n in self.keep.values() if n == 0)


def plan_batch(records: Iterable[RecordLike], *, stage: str = "indexer") -> BatchPlan:
    """Chunks to upsert, chunk counts per resource and dead letters for a batch, in log order.

    A later record about the same resource wins, as it would if the records were applied
    one by one; an unreadable record becomes a dead letter and never stops the batch.
    """
    by_resource: dict[str, list[Chunk]] = {}
    keep: dict[str, int] = {}
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
        for resource_id, count in plan.keep.items():
            keep[resource_id] = count
            by_resource[resource_id] = []
        for chunk in plan.upserts:
            by_resource[chunk.resource_id].append(chunk)
    upserts = [chunk for chunks in by_resource.values() for chunk in chunks]
    return BatchPlan(upserts, keep, letters)
