"""The audit log on a real broker: the chained writer one event at a time and in bulk, the
dashboard's writer, reading one patient's partition, and the chains verified after all of them;
a broker that cannot be reached gives AuditUnavailableError, never silence."""

import asyncio

import pytest

from clinstream.runtime import ensure_topics
from dashboard.live_source import Endpoints, LiveBackend
from kernel.audit import summary, verify
from kernel.audit_kafka import KafkaAuditLog, events_of, read_partitions
from kernel.errors import AuditUnavailableError
from kernel.settings import KafkaSettings, producer_config
from tests.fakes import query_audit_event

pytestmark = pytest.mark.integration


def _producer(broker):
    kafka = KafkaSettings(enable_idempotence=broker.kind != "tansu")
    return producer_config(kafka, broker.bootstrap, tansu=broker.kind == "tansu")


async def test_writers_chain_what_they_write_and_a_patient_reads_back_their_own(broker, topics):
    await ensure_topics(broker.bootstrap, [topics.audit], partitions=3, replication_factor=1)
    first, second = (
        KafkaAuditLog(_producer(broker), topics.audit),
        KafkaAuditLog(_producer(broker), topics.audit),
    )
    await first.start()
    await second.start()
    try:
        patients = [f"p{n}" for n in range(6)]
        await asyncio.gather(*(first.write(query_audit_event(n, p), p) for n, p in enumerate(patients)))
        await second.write_many([(query_audit_event(10 + n, p), p) for n, p in enumerate(patients)])
        # one writer, a bulk write and single writes to other partitions at the same time: each
        # partition's chain advances once per event, none is written over
        await asyncio.gather(
            second.write_many([(query_audit_event(30 + n, p), p) for n, p in enumerate(patients[:3])]),
            *(second.write(query_audit_event(40 + n, p), p) for n, p in enumerate(patients[3:])),
        )
        await first.write(query_audit_event(20, None), None)
    finally:
        await first.stop()
        await second.stop()
    backend = LiveBackend(
        Endpoints(
            api_url="http://127.0.0.1:9",
            api_token="unused",
            bootstrap=broker.bootstrap,
            topics=topics,
            producer=_producer(broker),
        )
    )
    await asyncio.to_thread(backend.audit, "ada", "unmask dead letter", "p3", ["dead-letter/d1"])

    records = await read_partitions(broker.bootstrap, topics.audit)
    found = verify((p, o, v) for p, o, _, v in records)
    assert found.events == 20
    assert found.breaks == []
    mine = await read_partitions(broker.bootstrap, topics.audit, key=b"p3")
    seen = [summary(e) for e in events_of(mine)]
    assert [s["principal"] for s in seen] == ["jwt:dr", "jwt:dr", "jwt:dr", "dashboard:ada"]
    assert {s["patient"] for s in seen} == {"p3"}


async def test_an_unreachable_audit_log_is_an_error():
    writer = KafkaAuditLog({"bootstrap_servers": "127.0.0.1:9", "request_timeout_ms": 1000}, "audit")
    with pytest.raises(AuditUnavailableError):
        await writer.start()
    with pytest.raises(AuditUnavailableError):
        await writer.write(query_audit_event(1, "p1"), "p1")
