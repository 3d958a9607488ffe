"""The contracts between stages: topic names, the envelope, event models and ids.

Every arrow between stages is a Kafka topic named here; the version is part of the
name. Records are keyed by the patient's stable key (`patient_key`), so each patient's
events stay ordered within one partition. Envelope headers never carry PHI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from kernel.errors import ClinstreamError, Hl7Error
from kernel.quality import DataQualityIssue

SCHEMA_VERSION = 1

Lane = Literal["live", "backfill"]
"""Which traffic a record belongs to. ``backfill``: history loaded by `clinstream backfill`;
stages do its heavy work at a lower CPU priority so live records keep their latency."""

# HL7 v2 message types (MSH-9.1^MSH-9.2) the normalizer maps today; others are dead-lettered
# by the normalizer with UnsupportedMessageError (the MLLP connector accepts every type).
SUPPORTED_HL7_EVENTS: frozenset[tuple[str, str]] = frozenset(
    {
        ("ADT", e)
        for e in (
            "A01",
            "A02",
            "A03",
            "A04",
            "A05",
            "A06",
            "A07",
            "A08",
            "A11",
            "A12",
            "A13",
            "A28",
            "A31",
            "A40",
            "A47",
            "A09",
            "A10",
            "A14",
            "A15",
            "A16",
            "A25",
            "A26",
            "A27",
            "A30",
            "A34",
            "A36",
            "A39",
            "A46",
            "A60",
        )
    }
    | {("ORU", "R01"), ("OUL", "R22"), ("OUL", "R23"), ("OUL", "R24")}
    | {("MDM", f"T{n:02d}") for n in range(1, 12)}
    | {("VXU", "V04")}
    | {("PPR", f"PC{n}") for n in (1, 2, 3)}
    | {("ORM", "O01"), ("OML", "O21"), ("OML", "O33"), ("OMG", "O19")}
    | {("RDE", "O11"), ("RDE", "O25"), ("RDS", "O13"), ("RAS", "O17"), ("OMP", "O09")}
    | {("SIU", f"S{n}") for n in range(12, 27)}
)


@dataclass(frozen=True)
class Topics:
    """Topic names. Tests build a prefixed instance to get fresh topics per test."""

    inbound_hl7v2: str = "ehr.inbound.hl7v2.v1"
    inbound_fhir: str = "ehr.inbound.fhir.v1"
    fhir: str = "ehr.fhir.v1"
    deadletter: str = "ehr.deadletter.v1"
    alerts: str = "cds.alerts.v1"
    drafts: str = "notes.drafts.v1"
    feedback: str = "clinician.feedback.v1"
    outbound_hl7v2: str = "ehr.outbound.hl7v2.v1"
    outbound_fhir: str = "ehr.outbound.fhir.v1"
    writeback: str = "ehr.writeback.v1"
    audit: str = "audit.events.v1"
    cds_state: str = "cds.state.v1"
    """Changelog of decision support's per-patient state (compacted, keyed by patient)."""
    cds_cards: str = "cds.cards.v1"
    """Cards shown through CDS Hooks: card uuid → patient and rule (compacted), for feedback."""
    notes_charts: str = "notes.charts.v1"
    """Changelog of the notes stage's patient charts (compacted; key: patient and resource)."""
    assist_charts: str = "assist.charts.v1"
    """Changelog of the assistance stage's patient charts (compacted; key: patient and resource)."""
    unmapped_codes: str = "terminology.unmapped.v1"
    """Changelog of the observation codes decision support does not know, counted per sender
    (compacted; co-partitioned with `ehr.fhir.v1`, key: input partition, sender, system, code)."""
    code_mappings: str = "terminology.mappings.v1"
    """Changelog of confirmed local code mappings, each with its versions (compacted; key:
    sender, system, code)."""

    def all(self) -> tuple[str, ...]:
        """Every topic name, in declaration order."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def with_prefix(self, prefix: str) -> Topics:
        """The same topics under ``prefix`` (e.g. ``"t3f2."``)."""
        return Topics(**{f.name: prefix + getattr(self, f.name) for f in fields(self)})


TOPICS = Topics()

_DAY_MS = 24 * 3600 * 1000
_TRANSIENT = ("inbound_hl7v2", "inbound_fhir", "outbound_hl7v2", "outbound_fhir", "writeback")
"""Topics kept a week: the raw input (replay after a mapping fix) and deliveries in flight."""
_CHANGELOGS = ("cds_state", "cds_cards", "notes_charts", "assist_charts", "unmapped_codes", "code_mappings")
"""Compacted topics: the latest value per key is the state a stage restores."""


def topic_config(topics: Topics, name: str, *, replication_factor: int) -> dict[str, str]:
    """How clinstream creates topic ``name``: retention by role, compaction for changelogs, and
    ``min.insync.replicas`` so that an acknowledged write (acks=all) is on two brokers whenever
    there are three replicas. The records of normalized data, alerts, drafts, feedback, audit
    and dead letters are the system of record: kept until an operator decides otherwise."""
    role = next((f.name for f in fields(topics) if getattr(topics, f.name) == name), None)
    config = {"min.insync.replicas": str(max(1, min(2, replication_factor - 1)))}
    if role in _CHANGELOGS:
        config |= {"cleanup.policy": "compact", "retention.ms": "-1"}
    elif role in _TRANSIENT:
        config |= {"cleanup.policy": "delete", "retention.ms": str(7 * _DAY_MS)}
    else:
        config |= {"cleanup.policy": "delete", "retention.ms": "-1"}
    return config


def deterministic_id(kind: str, *parts: str | None) -> str:
    """A stable FHIR-compatible id (64 hex chars max is allowed; we use 32) from source identifiers.

    The same source identifiers always give the same id, so replays overwrite.
    """
    text = "\x1f".join([kind, *(part or "" for part in parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def patient_key(assigning_authority: str, identifier: str) -> str:
    """The patient's stable key: Kafka record key, FHIR Patient id and Milvus partition key.

    Derived from the identifier and its assigning authority (not the sending system), so
    two feeds naming the same MRN of the same authority land on the same patient. It is
    a one-way hash: the MRN itself never appears in keys, headers or logs.
    """
    return deterministic_id("Patient", assigning_authority.strip().upper(), identifier.strip())


def content_hash(payload: bytes) -> str:
    """SHA-256 of a payload, as carried in the envelope and dead letters."""
    return hashlib.sha256(payload).hexdigest()


def envelope_headers(
    *,
    source_system: str,
    source_message_id: str,
    content_hash: str,
    received_at: datetime,
    trace_id: str,
    message_type: str,
    schema_version: int = SCHEMA_VERSION,
    lane: Lane = "live",
) -> list[tuple[str, bytes]]:
    """The envelope as Kafka headers, built directly (the MLLP hot path skips the model). The
    ``lane`` header is written only for backfill records (live is what a record without it is)."""
    headers = [
        ("source_system", source_system.encode()),
        ("source_message_id", source_message_id.encode()),
        ("content_hash", content_hash.encode()),
        ("received_at", received_at.isoformat().encode()),
        ("trace_id", trace_id.encode()),
        ("message_type", message_type.encode()),
        ("schema_version", str(schema_version).encode()),
    ]
    if lane != "live":
        headers.append(("lane", lane.encode()))
    return headers


class Envelope(BaseModel):
    """Metadata carried as Kafka headers on every record. No PHI here."""

    model_config = ConfigDict(frozen=True)

    source_system: str = Field(description="Sending application^facility, or the FHIR client.")
    source_message_id: str = Field(description="MSH-10, or FHIR meta.versionId.")
    content_hash: str
    received_at: datetime
    trace_id: str
    message_type: str = Field(default="", description="e.g. ADT^A01")
    schema_version: int = SCHEMA_VERSION
    lane: Lane = Field(default="live", description="backfill: history from `clinstream backfill`.")

    def to_headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers (aiokafka form)."""
        return envelope_headers(
            source_system=self.source_system,
            source_message_id=self.source_message_id,
            content_hash=self.content_hash,
            received_at=self.received_at,
            trace_id=self.trace_id,
            message_type=self.message_type,
            schema_version=self.schema_version,
            lane=self.lane,
        )

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]] | dict[str, Any]) -> Envelope:
        """Read an envelope back from Kafka headers (list of pairs or FastStream's dict)."""
        items = headers.items() if isinstance(headers, dict) else headers
        raw = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in items}
        return cls.model_validate(raw)


FhirInteraction = Literal["create", "update", "transaction", "batch-entry", "notification"]


class FhirInbound(BaseModel):
    """One record on `ehr.inbound.fhir.v1`: FHIR input as received, validated, not yet normalized.

    A transaction Bundle travels as one record (its entries belong together); each entry of
    a batch Bundle, and each created or updated resource, as its own record.
    """

    model_config = ConfigDict(frozen=True)

    interaction: FhirInteraction
    resources: list[dict[str, Any]] = Field(description="Validated FHIR R4 resources, ids as sent.")
    patient_ref: str | None = Field(default=None, description="Patient/<id> the record is about, if known.")
    references: list[str] = Field(
        default_factory=list, description="Id-only Subscription notifications: the changed resources' URLs."
    )
    full_urls: list[str | None] = Field(
        default_factory=list,
        description="Bundle entry fullUrls, parallel to resources (urn:uuid resolution).",
    )


class WritebackOutcome(BaseModel):
    """What happened to one outbound delivery (FHIR write-back or HL7 over MLLP)."""

    model_config = ConfigDict(frozen=True)

    channel: Literal["fhir", "mllp"]
    target: str = Field(description="Resource reference (Type/id) or MSH-10 of the message sent.")
    outcome: Literal["delivered", "rejected", "failed"]
    status: str = Field(description="HTTP status or ACK code of the last attempt.")
    attempts: int
    detail: str = ""
    at: datetime


class FhirRecord(BaseModel):
    """One record on `ehr.fhir.v1`: the validated FHIR R4 resources of one source message."""

    model_config = ConfigDict(frozen=True)

    envelope: Envelope
    patient_id: str = Field(description="FHIR Patient id (= the record key).")
    resources: list[dict[str, Any]] = Field(description="FHIR R4 resources as JSON, validated.")
    unmapped: dict[str, int] = Field(
        default_factory=dict,
        description="Source segments (Z-segments included) and fields no mapping read, with counts.",
    )
    issues: list[DataQualityIssue] = Field(
        default_factory=list,
        description="Data-quality problems the message converted despite (kernel.quality); no values.",
    )


class DeadLetter(BaseModel):
    """A message a stage could not process, kept with its original bytes for replay."""

    # Original bytes need not be UTF-8 (Latin-1 feeds, binary junk): base64 in JSON.
    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    stage: str
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    error_type: str
    reason: str
    error_code: int | None = Field(default=None, description="HL7 table 0357 code, when HL7.")
    location: str = Field(default="", description="Segment/field such as PID-3; no content.")
    control_id: str | None = None
    payload_sha256: str
    payload: bytes = Field(description="Original bytes (base64 in JSON).")
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    envelope: Envelope | None = None
    key: bytes | None = Field(default=None, description="Record key of the original (base64 in JSON).")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def id(self) -> str:
        """Stable id of this dead letter (what `clinstream replay --id` takes)."""
        return deterministic_id(
            "DeadLetter",
            self.stage,
            self.source_topic,
            str(self.partition),
            str(self.offset),
            self.payload_sha256,
        )

    @classmethod
    def from_error(
        cls,
        error: Exception,
        *,
        stage: str,
        payload: bytes,
        source_topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        envelope: Envelope | None = None,
        key: bytes | None = None,
    ) -> DeadLetter:
        """A dead letter for ``error``. Only our typed errors contribute their text.

        Other exceptions may carry message content in their text (a KeyError naming a
        value, say), so only their type is kept.
        """
        code = location = control_id = None
        if isinstance(error, ClinstreamError):
            reason = str(error)
        else:
            reason = f"internal error ({type(error).__name__}) while processing; see stage logs"
        if isinstance(error, Hl7Error):
            code, location, control_id = error.code, error.location, error.control_id
        return cls(
            stage=stage,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            error_type=type(error).__name__,
            reason=reason,
            error_code=code,
            location=location or "",
            control_id=control_id or (envelope.source_message_id if envelope else None),
            payload_sha256=content_hash(payload),
            payload=payload,
            envelope=envelope,
            key=key,
        )

    def headers(self) -> dict[str, str]:
        """Kafka headers for the dead-letter record (no PHI)."""
        return {"stage": self.stage, "error_type": self.error_type}


Severity = Literal["info", "warning", "critical"]


class AlertInput(BaseModel):
    """One value an alert rests on, as the clinician saw it, with its time and source."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description='e.g. "Respiratory rate"')
    value: str = Field(description='As sent, e.g. "26 /min"; what it scored, if scored, e.g. "(3)".')
    at: datetime | None = None
    ref: str | None = Field(default=None, description="Source resource (Type/id).")


class ClinicianFeedback(BaseModel):
    """A clinician's answer to an alert card or a draft, on `clinician.feedback.v1`."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Deterministic: target + outcome + time, so a resent feedback dedupes.")
    patient_id: str
    target: Literal["alert", "draft"]
    target_id: str = Field(description="The alert id (= the CDS Hooks card uuid) or draft id.")
    rule_id: str | None = None
    outcome: Literal["accepted", "overridden", "edited", "rejected"]
    reason_code: str | None = None
    reason_display: str | None = None
    comment: str | None = Field(default=None, description="The clinician's words; never logged.")
    accepted_suggestions: tuple[str, ...] = ()
    draft_text: str | None = Field(default=None, description="Drafts: the text as drafted; never logged.")
    final_text: str | None = Field(default=None, description="Drafts: the text the clinician made final.")
    reviewer: str | None = Field(default=None, description="Drafts: who decided, as they gave it.")
    at: datetime
    channel: str = Field(description='e.g. "cds-hooks"')
    principal: str = Field(description="Who sent it: the JWT issuer, or api-token.")


class Alert(BaseModel):
    """A decision-support alert on `cds.alerts.v1`."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Deterministic: rule + dedupe key + evidence, so redelivery dedupes.")
    patient_id: str
    rule_id: str
    rule_version: str
    severity: Severity
    summary: str = Field(max_length=140)
    detail: str
    evidence: tuple[str, ...] = Field(description="Resource references the alert rests on (Type/id).")
    citation: str
    effective: datetime | None = None
    raised_at: datetime
    trace_id: str
    key: str = Field(default="", description="Dedupe key: rule + subject (one patient).")
    level: int = Field(default=0, description="Rank in the key (NEWS2 band, AKI stage); a rise re-alerts.")
    inputs: tuple[AlertInput, ...] = Field(default=(), description="What the rule read, with times.")
    thresholds: str = Field(default="", description="The thresholds the inputs crossed.")


DraftStatus = Literal["preliminary", "final", "entered-in-error"]


class DraftNote(BaseModel):
    """A draft clinical note on `notes.drafts.v1`: the DocumentReference and its Provenance.

    Published again, with the same id, when a clinician accepts (``final``), edits (``final``,
    their text) or rejects it (``entered-in-error``)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(
        description="Deterministic: patient + kind + anchor, so a redelivered trigger overwrites."
    )
    patient_id: str
    kind: str = Field(description="discharge-summary, progress-note or lab-interpretation")
    anchor: str = Field(description="The Encounter or DiagnosticReport it is about (Type/id), or ''.")
    status: DraftStatus
    document: dict[str, Any] = Field(
        description="FHIR R4 DocumentReference (the note as a base64 attachment)."
    )
    provenance: dict[str, Any] = Field(
        description="FHIR R4 Provenance: model, version, prompt hash, sources."
    )
    citations: tuple[str, ...] = Field(description="Every resource the note cites (Type/id).")
    sentences: int = Field(description="Sentences checked by the grounding guard.")
    removed: tuple[str, ...] = Field(default=(), description="Why each removed sentence failed (no text).")
    model: str = ""
    generated_tokens: int = 0
    generation_s: float = 0.0
    created: datetime
    trace_id: str = ""
