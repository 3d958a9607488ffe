"""An in-memory dashboard backend for the AppTest page tests.

Its metrics are real Prometheus expositions (the stages' metric names, written by
prometheus_client into a private registry), its dead letter a real corpus message
(Microsoft FHIR-Converter's ADT-A01-01) refused by the real parser.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dashboard.app import Config
from dashboard.auth import hash_password, parse_logins
from dashboard.errors import SourceUnavailableError
from dashboard.live_source import Sampler
from dashboard.queries import LagRow, ReplayReceipt, Snapshot, lag_samples, parse_metrics, with_samples
from inference.cds.terminology import Sighting, suggest
from kernel.events import TOPICS, Alert, ClinicianFeedback, DeadLetter, content_hash
from kernel.hl7v2.parser import parse_message
from kernel.replay import Replay
from tests.conftest import corpora_dir

PASSWORDS = {"ada": "admin-pw", "vic": "viewer-pw", "cleo": "clinician-pw", "ian": "integration-pw"}
ROLES = {"ada": "admin", "vic": "viewer", "cleo": "clinician", "ian": "integration"}
PATIENT = "MERCY|100002"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _exposition(scale: float) -> str:
    registry = CollectorRegistry()
    records = Counter("clinstream_stage_records", "", ["stage"], registry=registry)
    latency = Histogram(
        "clinstream_stage_latency_seconds", "", ["stage"], buckets=(0.05, 0.1, 0.5, 1, 5), registry=registry
    )
    acks = Counter("clinstream_mllp_messages", "", ["sender", "ack_code"], registry=registry)
    ack_s = Histogram(
        "clinstream_mllp_ack_seconds", "", ["sender"], buckets=(0.005, 0.01, 0.1), registry=registry
    )
    dead = Counter("clinstream_dead_letters", "", ["stage"], registry=registry)
    quality = Counter("clinstream_data_quality_issues", "", ["code", "sender", "severity"], registry=registry)
    sessions = Gauge("clinstream_model_sessions", "", ["model", "file", "provider"], registry=registry)
    run_s = Histogram(
        "clinstream_model_run_seconds", "", ["model"], buckets=(0.01, 0.1, 1), registry=registry
    )
    rows = Counter("clinstream_model_rows", "", ["model"], registry=registry)
    last = Gauge("clinstream_index_last_batch_timestamp", "", registry=registry)
    suggestions = Counter("clinstream_assist_suggestions", "", ["kind", "rule_id"], registry=registry)
    for stage, n in (("normalizer", 120), ("indexer", 118), ("cds", 120)):
        records.labels(stage).inc(n * scale)
        for _ in range(int(n * scale)):
            latency.labels(stage).observe(0.08 if stage != "indexer" else 0.7)
    acks.labels("ADTApp^GHHSFacility", "AA").inc(115 * scale)
    acks.labels("ADTApp^GHHSFacility", "AE").inc(5 * scale)
    for _ in range(int(120 * scale)):
        ack_s.labels("ADTApp^GHHSFacility").observe(0.004)
    dead.labels("mllp").inc(5 * scale)
    quality.labels("malformed-timestamp", "LAB^STATEPHL", "warning").inc(7 * scale)
    quality.labels("unknown-value-type", "LAB^STATEPHL", "warning").inc(2 * scale)
    sessions.labels("all-MiniLM-L6-v2/fp32", "model.onnx", "CPUExecutionProvider").set(2)
    for _ in range(int(40 * scale)):
        run_s.labels("all-MiniLM-L6-v2/fp32").observe(0.02)
    rows.labels("all-MiniLM-L6-v2/fp32").inc(400 * scale)
    last.set(NOW.timestamp() - 3)
    suggestions.labels("diagnosis", "dx-hypertension").inc(12 * scale)
    suggestions.labels("treatment", "tx-hypertension").inc(9 * scale)
    return generate_latest(registry).decode()


def refused_letter() -> DeadLetter:
    """The corpus A01 refused at the edge (no source topic) for a bad PID-7."""
    raw = (corpora_dir() / "hl7v2/microsoft-fhir-converter/ADT-A01-01.hl7").read_bytes()
    message = parse_message(raw.decode())
    return DeadLetter(
        stage="mllp",
        error_type="DataTypeError",
        reason="PID-7 is not a valid HL7 date/time",
        error_code=102,
        location="PID-7",
        control_id=message.control_id,
        payload_sha256=content_hash(raw),
        payload=raw,
        failed_at=NOW - timedelta(minutes=5),
    )


def topic_letter() -> DeadLetter:
    """A letter the normalizer wrote after reading the inbound topic (replayable as is)."""
    letter = refused_letter()
    return letter.model_copy(
        update={
            "stage": "normalizer",
            "source_topic": TOPICS.inbound_hl7v2,
            "partition": 0,
            "offset": 7,
            "error_type": "MappingError",
            "reason": "unsupported OBX value type",
            "location": "OBX-2",
            "key": PATIENT.encode(),
            "failed_at": NOW - timedelta(minutes=2),
        }
    )


def _alert(n: int, rule: str, severity: str) -> Alert:
    return Alert(
        id=f"alert-{n}",
        patient_id=PATIENT,
        rule_id=rule,
        rule_version="1",
        severity=severity,  # type: ignore[arg-type]
        summary=f"{rule} alert {n}",
        detail="d",
        evidence=("Observation/o1",),
        citation="c",
        raised_at=NOW - timedelta(minutes=n),
        trace_id="t",
    )


NOTE = (
    "# Discharge summary (DRAFT, preliminary: review before signing)\n\n"
    "## Key results\n- Potassium 6.2 mmol/L, up from 4.1 [1][2]\n\n"
    "## Sources\n[1] Observation/k2: Potassium 6.2 mmol/L\n[2] Observation/k1: Potassium 4.1 mmol/L\n"
)


class FakeBackend:
    """Readings held in memory; what the pages did is recorded."""

    def __init__(self) -> None:
        self.letters = [refused_letter(), topic_letter()]
        self.replayed: list[Replay] = []
        self.reviews: list[tuple[str, dict[str, Any]]] = []
        self.searches: list[dict[str, Any]] = []
        self.audited: list[tuple[str, str, str | None, list[str]]] = []
        self.audit_reads: list[tuple[str, datetime | None]] = []
        self.audit_down = False
        self.confirmed: list[dict[str, Any]] = []
        self.mappings: list[dict[str, Any]] = []
        self.snapshots = [
            parse_metrics([_exposition(1.0)], 1000.0),
            parse_metrics([_exposition(2.0)], 1010.0),
        ]
        self.alert_list = [
            _alert(1, "critical-potassium", "critical"),
            _alert(2, "news2", "warning"),
            _alert(3, "news2", "warning"),
        ]
        self.draft_list = [
            {
                "id": "draft-1",
                "patient_id": PATIENT,
                "type": "discharge-summary",
                "status": "preliminary",
                "created": NOW.isoformat(),
                "model": "SmolLM2-135M-Instruct",
                "guard": {"sentences_checked": 1, "removed": 0, "reasons": []},
                "documentReference": {
                    "content": [{"attachment": {"data": base64.b64encode(NOTE.encode()).decode()}}]
                },
            }
        ]

    def snapshot(self) -> Snapshot:
        snap = self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]
        return with_samples(snap, lag_samples(self.lag()))

    def lag(self) -> list[LagRow]:
        return [
            LagRow("normalizer", TOPICS.inbound_hl7v2, 0, 10, 12),
            LagRow("indexer", TOPICS.fhir, 0, 9, 9),
        ]

    def dead_letters(self) -> list[DeadLetter]:
        return list(self.letters)

    def replay(self, replays: Sequence[Replay]) -> list[ReplayReceipt]:
        self.replayed.extend(replays)
        return [ReplayReceipt(r.letter_id, r.topic, 0, 100 + n, r.edited, NOW) for n, r in enumerate(replays)]

    def committed_low(self) -> dict[tuple[str, int], int]:
        return {(TOPICS.inbound_hl7v2, 0): 101}

    def alerts(self, last: int) -> list[Alert]:
        return self.alert_list

    def feedback(self, last: int) -> list[ClinicianFeedback]:
        return [
            ClinicianFeedback(
                id="f1",
                patient_id=PATIENT,
                target="alert",
                target_id="alert-2",
                rule_id="news2",
                outcome="overridden",
                at=NOW,
                channel="cds-hooks",
                principal="ehr",
            ),
            ClinicianFeedback(
                id="f2",
                patient_id=PATIENT,
                target="alert",
                target_id="card-dx-1",
                rule_id="dx-hypertension",
                outcome="accepted",
                accepted_suggestions=("s1",),
                at=NOW,
                channel="cds-hooks",
                principal="ehr",
            ),
        ]

    def index_stats(self) -> list[dict[str, Any]]:
        return [{"name": "clinstream_chunks", "rows": 1234, "embedding": "all-MiniLM-L6-v2/fp32/384"}]

    def search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.searches.append(body)
        return [
            {
                "resource_id": "Observation/k2",
                "text": "Potassium 6.2 mmol/L",
                "date": "2025-03-01",
                "score": 0.81,
            }
        ]

    def drafts(self, status: str | None) -> list[dict[str, Any]]:
        return [d for d in self.draft_list if status is None or d["status"] == status]

    def review(self, draft_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.reviews.append((draft_id, body))
        return {**self.draft_list[0], "status": "final"}

    def unmapped_codes(self) -> list[dict[str, Any]]:
        seen = Sighting(
            sender="LIS^MERCY_LAB",
            system="urn:clinstream:codesystem:L",
            code="K",
            display="Potassium",
            count=12,
            units={"mmol/L": 12},
            low=Decimal("3.1"),
            high=Decimal("6.9"),
            unit_of_range="mmol/L",
        )
        return [
            {
                **seen.model_dump(mode="json"),
                "suggestions": [s.model_dump(mode="json") for s in suggest(seen)],
            }
        ]

    def code_mappings(self) -> list[dict[str, Any]]:
        return list(self.mappings)

    def confirm_mapping(self, body: dict[str, Any]) -> dict[str, Any]:
        self.confirmed.append(body)
        return {"mapping": {"current": {"version": 1, "loinc": body["loinc"]}}}

    def audit(self, user: str, action: str, patient: str | None, resources: Sequence[str]) -> None:
        if self.audit_down:
            raise SourceUnavailableError("Kafka: KafkaConnectionError")
        self.audited.append((user, action, patient, list(resources)))

    def audit_events(self, patient: str, since: datetime | None) -> list[dict[str, Any]]:
        self.audit_reads.append((patient, since))
        return [
            {
                "time": NOW.isoformat(),
                "principal": "jwt:dr-who",
                "action": "POST /query",
                "patient": patient,
                "resources": ["Observation/k2"],
                "outcome": "success",
            }
        ]


def build() -> tuple[FakeBackend, Sampler, Config]:
    """A backend with two samples taken, and a config with one login per role."""
    backend = FakeBackend()
    sampler = Sampler(backend, every_s=3600, keep=10)
    sampler.sample()
    sampler.sample()
    logins = parse_logins(f"{n}:{ROLES[n]}:{hash_password(p, iterations=1000)}" for n, p in PASSWORDS.items())
    return backend, sampler, Config(logins=logins, topics=TOPICS, cache_s=0.0)


CURRENT = build()  # the page tests put a fresh one here before each run
