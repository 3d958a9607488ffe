"""The dashboard's readings: the stages' /metrics, Kafka and the query API (thin adapters).

`Backend` is what the pages need; `LiveBackend` reads a running deployment, tests pass an
in-memory one. `Sampler` scrapes metrics and consumer lag every few seconds in a
background thread and keeps the last hour, so the Overview can chart it without a
Prometheus server (production can point Prometheus/Grafana at the same /metrics too).

Consumer lag comes from the Kafka admin API through librdkafka (`confluent_kafka`): its
ListConsumerGroupOffsets works against both Apache Kafka and the embedded Tansu broker,
where aiokafka's admin client fails to decode Tansu's OffsetFetch answer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from dashboard.errors import SourceUnavailableError
from dashboard.queries import (
    LagRow,
    ReplayReceipt,
    Snapshot,
    lag_rows,
    lag_samples,
    parse_metrics,
    with_samples,
)
from kernel.audit import audit_event
from kernel.audit_kafka import KafkaAuditLog
from kernel.errors import ClinstreamError
from kernel.events import Alert, ClinicianFeedback, DeadLetter, Topics
from kernel.replay import Replay
from kernel.replay_kafka import read_dead_letters, read_topic, republish

log = logging.getLogger(__name__)
TIMEOUT_S = 5.0


class Backend(Protocol):
    """Everything the pages read and do."""

    def snapshot(self) -> Snapshot:
        """Metrics of every stage process now, with consumer lag added."""

    def lag(self) -> list[LagRow]:
        """Consumer lag per group and partition."""

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter on the topic."""

    def replay(self, replays: Sequence[Replay]) -> list[ReplayReceipt]:
        """Write replays (acks=all); where each went."""

    def committed_low(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition): the lowest committed offset of the groups that read it."""

    def alerts(self, last: int) -> list[Alert]:
        """The latest alerts (``last`` per partition)."""

    def feedback(self, last: int) -> list[ClinicianFeedback]:
        """The latest clinician feedback (``last`` per partition)."""

    def index_stats(self) -> list[dict[str, Any]]:
        """Collections with row counts."""

    def search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """`POST /query` results."""

    def drafts(self, status: str | None) -> list[dict[str, Any]]:
        """Drafts (`GET /notes/drafts`), optionally by status."""

    def review(self, draft_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /notes/drafts/{id}/review`; the reviewed draft."""

    def unmapped_codes(self) -> list[dict[str, Any]]:
        """`GET /terminology/unmapped`: codes decision support does not know, with suggestions."""

    def code_mappings(self) -> list[dict[str, Any]]:
        """`GET /terminology/mappings`: confirmed mappings with their versions and re-runs."""

    def confirm_mapping(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /terminology/mappings`: confirm one (and re-run its history when asked)."""

    def audit(self, user: str, action: str, patient: str | None, resources: Sequence[str]) -> None:
        """Write the AuditEvent of a dashboard user's access to patient data (unmasking, replay)
        before it happens; raises `SourceUnavailableError` when the audit log cannot take it."""

    def audit_events(self, patient: str, since: datetime | None) -> list[dict[str, Any]]:
        """`GET /audit/events`: who accessed this patient's data."""


@dataclass(frozen=True)
class Endpoints:
    """Where a deployment's readings are."""

    api_url: str
    api_token: str
    bootstrap: str
    topics: Topics
    metrics_urls: tuple[str, ...] = ()
    producer: dict[str, Any] | None = None
    security: dict[str, Any] = field(default_factory=dict)
    """aiokafka's connection security (`kernel.settings.kafka_security`)."""
    librdkafka: dict[str, Any] = field(default_factory=dict)
    """The same for librdkafka (`kernel.settings.librdkafka_security`)."""
    verify: Any = True
    """How the API's certificate is checked (an SSL context when it serves TLS)."""


class LiveBackend:
    """Reads a running deployment."""

    def __init__(self, endpoints: Endpoints, http: httpx.Client | None = None) -> None:
        self._ep = endpoints
        self._http = http or httpx.Client(
            base_url=endpoints.api_url,
            headers={"Authorization": f"Bearer {endpoints.api_token}"},
            timeout=TIMEOUT_S,
            verify=endpoints.verify,
        )
        self._admin = AdminClient(
            {"bootstrap.servers": endpoints.bootstrap, "socket.timeout.ms": 5000, **endpoints.librdkafka}
        )
        self._metrics = endpoints.metrics_urls or (f"{endpoints.api_url.rstrip('/')}/metrics",)

    # --- HTTP: metrics and the query API

    def _get(self, url: str, **params: str) -> httpx.Response:
        try:
            response = self._http.get(url, params=params)
        except httpx.HTTPError as exc:
            raise SourceUnavailableError(f"cannot reach {url.split('?')[0]} ({type(exc).__name__})") from exc
        return response

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            detail = ""
            try:
                detail = str(response.json().get("detail", ""))
            except ValueError:
                pass
            raise SourceUnavailableError(f"{response.request.url.path}: HTTP {response.status_code} {detail}")
        return response.json()

    def snapshot(self) -> Snapshot:
        texts = []
        for url in self._metrics:
            response = self._get(url)
            if response.status_code != 200:
                raise SourceUnavailableError(f"{url}: HTTP {response.status_code}")
            texts.append(response.text)
        snap = parse_metrics(texts, time.time())
        try:
            return with_samples(snap, lag_samples(self.lag()))
        except SourceUnavailableError:
            return snap

    def index_stats(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(self._get("/index/stats"))["collections"]
        return result

    def search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            response = self._http.post("/query", json=body)
        except httpx.HTTPError as exc:
            raise SourceUnavailableError(f"cannot reach the query API ({type(exc).__name__})") from exc
        result: list[dict[str, Any]] = self._json(response)["results"]
        return result

    def drafts(self, status: str | None) -> list[dict[str, Any]]:
        response = self._get("/notes/drafts", **({"status": status} if status else {}))
        if response.status_code == 404:
            return []  # the notes stage is off in this deployment
        result: list[dict[str, Any]] = self._json(response)["drafts"]
        return result

    def unmapped_codes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(self._get("/terminology/unmapped"))["codes"]
        return result

    def code_mappings(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(self._get("/terminology/mappings"))["mappings"]
        return result

    def confirm_mapping(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post("/terminology/mappings", json=body)
        except httpx.HTTPError as exc:
            raise SourceUnavailableError(f"cannot reach the terminology API ({type(exc).__name__})") from exc
        result: dict[str, Any] = self._json(response)
        return result

    def review(self, draft_id: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(f"/notes/drafts/{draft_id}/review", json=body)
        except httpx.HTTPError as exc:
            raise SourceUnavailableError(f"cannot reach the notes API ({type(exc).__name__})") from exc
        result: dict[str, Any] = self._json(response)
        return result

    # --- Kafka

    def _groups_offsets(self) -> dict[tuple[str, str, int], int | None]:
        try:
            listed = self._admin.list_consumer_groups(request_timeout=TIMEOUT_S).result(timeout=TIMEOUT_S)
            groups = sorted(g.group_id for g in listed.valid)
            committed: dict[tuple[str, str, int], int | None] = {}
            for group in groups:
                future = self._admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
                for tp in future.result(timeout=TIMEOUT_S).topic_partitions or []:
                    committed[(group, tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        except KafkaException as exc:
            raise SourceUnavailableError(f"Kafka admin: {exc.args[0].name() if exc.args else exc}") from exc
        return committed

    def _ends(self, partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        request = {KafkaPartition(t, p): OffsetSpec.latest() for t, p in partitions}  # type: ignore[no-untyped-call]
        try:
            futures = self._admin.list_offsets(request, request_timeout=TIMEOUT_S)
            return {(tp.topic, tp.partition): f.result(timeout=TIMEOUT_S).offset for tp, f in futures.items()}
        except KafkaException as exc:
            raise SourceUnavailableError("Kafka admin: end offsets unavailable") from exc

    def lag(self) -> list[LagRow]:
        committed = self._groups_offsets()
        ends = self._ends({(t, p) for _, t, p in committed})
        return lag_rows(committed, ends)

    def committed_low(self) -> dict[tuple[str, int], int]:
        low: dict[tuple[str, int], int] = {}
        for (_, topic, partition), offset in self._groups_offsets().items():
            at = offset if offset is not None else 0
            low[(topic, partition)] = min(low.get((topic, partition), at), at)
        return low

    def _run(self, coro: Any) -> Any:
        try:
            return asyncio.run(coro)
        except (OSError, ClinstreamError) as exc:
            raise SourceUnavailableError(f"Kafka: {type(exc).__name__}") from exc
        except Exception as exc:  # aiokafka's KafkaError and friends: the broker, not us
            if type(exc).__module__.startswith("aiokafka"):
                raise SourceUnavailableError(f"Kafka: {type(exc).__name__}") from exc
            raise

    def dead_letters(self) -> list[DeadLetter]:
        letters: list[DeadLetter] = self._run(
            read_dead_letters(self._ep.bootstrap, self._ep.topics, self._ep.security)
        )
        return letters

    def alerts(self, last: int) -> list[Alert]:
        records = self._run(
            read_topic(self._ep.bootstrap, self._ep.topics.alerts, last=last, security=self._ep.security)
        )
        return [Alert.model_validate_json(r.value) for r in records]

    def feedback(self, last: int) -> list[ClinicianFeedback]:
        records = self._run(
            read_topic(self._ep.bootstrap, self._ep.topics.feedback, last=last, security=self._ep.security)
        )
        return [ClinicianFeedback.model_validate_json(r.value) for r in records]

    def audit(self, user: str, action: str, patient: str | None, resources: Sequence[str]) -> None:
        event = audit_event(
            principal=f"dashboard:{user}",
            action="R" if action.startswith("unmask") else "E",
            what=f"dashboard {action}",
            patient=patient,
            resources=resources,
            outcome="0",
            detail="ok",
            at=datetime.now(UTC),
            trace_id=secrets.token_hex(16),
            observer="clinstream dashboard",
        )
        producer = self._ep.producer or {"bootstrap_servers": self._ep.bootstrap, "acks": "all"}

        async def write() -> None:
            log_ = KafkaAuditLog(producer, self._ep.topics.audit, timeout_s=TIMEOUT_S * 2)
            await log_.start()
            try:
                await log_.write(event, patient)
            finally:
                await log_.stop()

        self._run(write())

    def audit_events(self, patient: str, since: datetime | None) -> list[dict[str, Any]]:
        params = {"patient": patient, **({"since": since.isoformat()} if since else {})}
        found = self._json(self._get("/audit/events", **params))
        return list(found["events"])

    def replay(self, replays: Sequence[Replay]) -> list[ReplayReceipt]:
        producer = self._ep.producer or {"bootstrap_servers": self._ep.bootstrap, "acks": "all"}
        written = self._run(republish(producer, replays))
        now = datetime.now(UTC)
        edited = {r.letter_id: r.edited for r in replays}
        return [
            ReplayReceipt(w.letter_id, w.topic, w.partition, w.offset, edited[w.letter_id], now)
            for w in written
        ]


class Sampler:
    """Samples `Backend.snapshot` every ``every_s`` seconds in a daemon thread, keeping
    ``keep`` samples (the Overview's last hour). A failed sample is skipped and counted."""

    def __init__(self, backend: Backend, *, every_s: float, keep: int) -> None:
        self._backend = backend
        self._every = every_s
        self.samples: deque[Snapshot] = deque(maxlen=keep)
        self.failures = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clinstream-dashboard-sampler", daemon=True)

    def start(self) -> Sampler:
        """Take a first sample now, then keep sampling in the background."""
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()

    def sample(self) -> None:
        """Take one sample."""
        try:
            self.samples.append(self._backend.snapshot())
            self.last_error = ""
        except SourceUnavailableError as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.warning("dashboard sample failed: %s", exc)

    def history(self) -> list[Snapshot]:
        """The samples kept, oldest first."""
        return list(self.samples)

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()
