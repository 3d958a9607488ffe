"""Note safety signals with the real ONNX embedding model: what it adds to the phrases, and a
failing model run retried by decision support on the real broker, never dead-lettered."""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from clinstream.runtime import ensure_topics
from clinstream.stack import stage_broker
from inference.cds import note_signals
from inference.cds.app import register_cds
from inference.cds.rules import RuleSet
from inference.cds.state_store import SqliteStateStore
from kernel.events import Alert, Envelope, FhirRecord
from kernel.settings import KafkaSettings, producer_config
from tests.unit.inference.cds import fixtures as cds_helpers

AT = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ENVELOPE = Envelope(
    source_system="EHR^NOTES",
    source_message_id="N1",
    content_hash="h",
    received_at=AT,
    trace_id="t-note",
)


def note(text):
    return cds_helpers.note(text, at=AT)


@pytest.fixture(scope="module")
def matcher(embedder):
    return note_signals.NoteMatcher(embedder)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # none of the phrases, so only the model can find these
        ("Pt slipped on wet floor in the bathroom this morning.", {("fall", "info")}),
        (
            "She swallowed a whole bottle of acetaminophen intending to die.",
            {("suicidal-ideation", "warning")},
        ),
        # the model alone would take these for signals; ConText takes them back
        ("Denies swallowing any pills intending to die.", set()),
        ("Her mother slipped on the wet bathroom floor.", set()),
        # ordinary chart sentences
        ("Blood pressure well controlled on lisinopril.", set()),
        ("Abdomen soft, non-tender.", set()),
    ],
)
def test_the_model_finds_what_the_phrases_miss_and_context_still_decides(matcher, text, expected):
    without = note_signals.evaluate([note(text)], default_time=AT)
    found = note_signals.evaluate([note(text)], default_time=AT, matcher=matcher)
    assert without == []
    assert {(f.key.split("/")[1], f.severity) for f in found} == expected


class FlakyEncoder:
    """The real embedder, whose first run on a note fails like a lost session."""

    def __init__(self, inner):
        self.inner, self.name, self.examples_done, self.failures = inner, inner.name, False, 1

    def embed(self, texts):
        if self.examples_done and self.failures:
            self.failures -= 1
            raise RuntimeError("onnxruntime session lost")
        self.examples_done = True
        return self.inner.embed(texts)


async def test_a_failed_model_run_is_retried_from_the_same_offset(
    broker, topics, prefix, embedder, monkeypatch
):
    monkeypatch.setattr("inference.cds.app.RETRY_BACKOFF_S", 0.2)
    await ensure_topics(broker.bootstrap, topics.all(), partitions=1, replication_factor=1)
    encoder = FlakyEncoder(embedder)
    rules = replace(RuleSet(), note_matcher=note_signals.NoteMatcher(encoder))
    config = producer_config(KafkaSettings(), broker.bootstrap, tansu=broker.kind == "tansu")
    kafka = stage_broker("cds", config)
    group = f"{prefix}cds"
    store = SqliteStateStore(":memory:")
    register_cds(kafka, topics, rules, store, group_id=group, clock=lambda: AT)
    producer = AIOKafkaProducer(**config)
    await producer.start()
    text = "Seen at 07:30. She swallowed a whole bottle of acetaminophen intending to die."
    record = FhirRecord(envelope=ENVELOPE, patient_id="p-note", resources=[note(text)])
    await producer.send_and_wait(topics.fhir, record.model_dump_json().encode(), key=b"p-note")
    await producer.stop()

    alerts = AIOKafkaConsumer(
        topics.alerts, topics.deadletter, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    await alerts.start()
    seen = []
    await kafka.start()
    try:
        async with asyncio.timeout(60):
            while not seen:
                for batch in (await alerts.getmany(timeout_ms=200)).values():
                    seen.extend(batch)
        await asyncio.sleep(1.0)  # anything more (a duplicate, a dead letter) would arrive by now
        for batch in (await alerts.getmany(timeout_ms=500)).values():
            seen.extend(batch)
    finally:
        await kafka.stop()
        await alerts.stop()
    assert encoder.failures == 0
    assert [r.topic for r in seen] == [topics.alerts]
    alert = Alert.model_validate_json(seen[0].value)
    assert (alert.rule_id, alert.severity, alert.evidence) == (
        "note-signal",
        "warning",
        ("DocumentReference/n1",),
    )
    assert alert.summary.startswith("Note may describe suicidal ideation")
    committed = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    await committed.start()
    try:
        assert await committed.committed(TopicPartition(topics.fhir, 0)) == 1
    finally:
        await committed.stop()
