"""MLLP server → real embedded broker: ACK only after the write is in Kafka; no ACK when it cannot be."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer

from clinstream.runtime import EmbeddedBroker, ensure_topics
from connectors.kafka_sink import make_sink
from connectors.mllp_client import MllpClient
from connectors.mllp_server import MllpServer
from kernel.events import DeadLetter, Envelope, patient_key
from kernel.settings import KafkaSettings, MllpSettings, producer_config

ORU = (
    b"MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|202503060830||ORU^R01^ORU_R01|LAB%d|P|2.5.1\r"
    b"PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
    b"OBX|1|NM|2823-3^Potassium^LN||6.4|mmol/L|3.5-5.1|HH|||F\r"
)


async def _consume(bootstrap, topic, n, timeout=20):
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return out


async def _server(bootstrap, topics, client="librdkafka", *, tansu):
    kafka = KafkaSettings(request_timeout_ms=2000, ingest_client=client)
    sink = make_sink(client, producer_config(kafka, bootstrap, tansu=tansu), confirm_timeout_s=3)
    await sink.start()
    server = MllpServer(sink, topics, MllpSettings(port=0))
    await server.start()
    return sink, server


@pytest.mark.parametrize("client", ["librdkafka", "aiokafka"])
async def test_accepted_messages_are_in_kafka_keyed_by_patient(broker, topics, client):
    await ensure_topics(broker.bootstrap, topics.all(), partitions=6, replication_factor=1)
    sink, server = await _server(broker.bootstrap, topics, client, tansu=broker.kind == "tansu")
    try:
        async with MllpClient("127.0.0.1", server.port) as client:
            codes = [(await client.send(ORU % n)).code for n in range(5)]
            bad = await client.send(b"MSH|^~\\&|LIS|LAB|EHR|H|2025||ORU^R01|BAD1|P|2.5.1\rPID|1||\r")
    finally:
        await server.stop()
        await sink.stop()
    assert codes == ["AA"] * 5
    assert bad.code == "AE"
    records = await _consume(broker.bootstrap, topics.inbound_hl7v2, 5)
    assert {r.key for r in records} == {patient_key("MERCY", "100002").encode()}
    assert len({r.partition for r in records}) == 1  # one patient, one partition, in order
    assert [Envelope.from_headers(r.headers).source_message_id for r in records] == [
        f"LAB{n}" for n in range(5)
    ]
    [dead] = await _consume(broker.bootstrap, topics.deadletter, 1)
    letter = DeadLetter.model_validate_json(dead.value)
    assert (letter.control_id, letter.location) == ("BAD1", "PID-3")


@pytest.mark.parametrize("client", ["librdkafka", "aiokafka"])
async def test_no_positive_ack_while_the_broker_is_down(topics, client):
    own = EmbeddedBroker()
    async with own:
        await ensure_topics(own.bootstrap, topics.all(), partitions=1, replication_factor=1)
        sink, server = await _server(own.bootstrap, topics, client, tansu=own.kind == "tansu")
        async with MllpClient("127.0.0.1", server.port) as client:
            assert (await client.send(ORU % 1)).code == "AA"
        own.stop()  # the broker dies under the running connector
        try:
            async with MllpClient("127.0.0.1", server.port, timeout_s=20) as client:
                result = await client.send(ORU % 2)
        finally:
            await server.stop()
            await sink.stop()
    assert result.code is None, "a positive ACK was sent although the broker was down"


async def test_whole_hl7_corpus_through_the_real_broker(broker, topics):
    """`clinstream send` over the corpus folder: every message answered, accepted ones stored."""
    from connectors.send_tool import send_files
    from tests.conftest import corpora_dir

    await ensure_topics(broker.bootstrap, topics.all(), partitions=6, replication_factor=1)
    sink, server = await _server(broker.bootstrap, topics, tansu=broker.kind == "tansu")
    try:
        report = await send_files(
            [corpora_dir() / "hl7v2"], "127.0.0.1", server.port, timeout_s=10, quiet_wait_s=0.1
        )
    finally:
        await server.stop()
        await sink.stop()
    codes = report.codes
    assert codes["none"] == 0
    assert codes["error"] == 0
    assert set(codes) <= {"AA", "CA", "AE", "AR", "CE", "CR", "-"}
    # "-": accepted and stored, no ACK sent because MSH-15 said NE/ER
    assert codes["AA"] + codes["CA"] + codes["-"] >= 600
    # Retransmitted (sender, MSH-10) pairs are answered with the original ACK, not stored twice.
    stored = await _consume_all(broker.bootstrap, topics.inbound_hl7v2)
    assert 200 <= len(stored) <= codes["AA"] + codes["CA"] + codes["-"]


async def _consume_all(bootstrap, topic, idle_s=2.0):
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out, quiet_since = [], asyncio.get_running_loop().time()
    try:
        while asyncio.get_running_loop().time() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
            if batch:
                quiet_since = asyncio.get_running_loop().time()
    finally:
        await consumer.stop()
    return out
