"""The embedded brokers: topics created as configured; what each engine offers producers; the
Apache Kafka log surviving a kill of the broker; no orphan process."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from confluent_kafka.admin import AdminClient, ConfigResource

from clinstream.errors import BrokerStartError
from clinstream.runtime import EmbeddedBroker, EmbeddedKafka, ensure_topics, missing_reason
from kernel.events import topic_config
from kernel.settings import KafkaSettings, producer_config


async def test_topics_are_created_with_partitions_and_their_policy(broker, topics):
    def configs(name):
        return topic_config(topics, name, replication_factor=1)

    await ensure_topics(broker.bootstrap, topics.all(), partitions=6, replication_factor=1, configs=configs)
    await ensure_topics(broker.bootstrap, topics.all(), partitions=6, replication_factor=1)  # idempotent
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topics.fhir])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 6
    if broker.kind != "kafka":
        return
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = client.describe_configs(
        [ConfigResource("topic", name) for name in (topics.cds_state, topics.inbound_hl7v2)]
    )
    found = {
        resource.name: {k: v.value for k, v in future.result(timeout=10).items()}
        for resource, future in futures.items()
    }
    assert found[topics.cds_state]["cleanup.policy"] == "compact"
    assert found[topics.inbound_hl7v2]["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert found[topics.inbound_hl7v2]["min.insync.replicas"] == "1"


async def test_apache_kafka_takes_idempotent_and_transactional_producers(broker, topics):
    if broker.kind != "kafka":
        pytest.skip("Apache Kafka only")
    await ensure_topics(broker.bootstrap, [topics.fhir], partitions=2, replication_factor=1)
    config = producer_config(KafkaSettings(), broker.bootstrap, tansu=False)
    assert config["acks"] == "all"
    assert config["enable_idempotence"] is True
    producer = AIOKafkaProducer(**config, transactional_id=f"{topics.fhir}-probe")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(topics.fhir, b"kept", key=b"p1")
        await producer.begin_transaction()
        await producer.send(topics.fhir, b"aborted", key=b"p1")
        await producer.abort_transaction()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topics.fhir,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
    finally:
        await consumer.stop()
    assert [r.value for batch in batches.values() for r in batch] == [b"kept"]


async def test_tansu_rejects_idempotent_producers(topics):
    """DESIGN.md: Tansu answers InitProducerId with an error, so idempotence is off for it."""
    async with EmbeddedBroker() as tansu:
        await ensure_topics(tansu.bootstrap, [topics.fhir], partitions=1, replication_factor=1)
        config = producer_config(KafkaSettings(), tansu.bootstrap, tansu=True)
        assert (config["acks"], config["enable_idempotence"]) == ("all", False)
        producer = AIOKafkaProducer(**config)
        await producer.start()
        try:
            assert (await producer.send_and_wait(topics.fhir, b"x", key=b"p1")).offset >= 0
        finally:
            await producer.stop()
        idempotent = AIOKafkaProducer(
            bootstrap_servers=tansu.bootstrap, enable_idempotence=True, acks="all", request_timeout_ms=3000
        )

        async def start_and_send():
            await idempotent.start()
            await asyncio.wait_for(idempotent.send_and_wait(topics.fhir, b"y"), 10)

        try:
            with pytest.raises(KafkaError):
                await start_and_send()
        finally:
            await idempotent.stop()


async def test_apache_kafka_keeps_what_it_acknowledged_when_killed(tmp_path, topics):
    """SIGKILL of the embedded broker right after an acknowledgement: restarted on the same
    folder (on another port), every acknowledged record is there."""
    first = EmbeddedKafka(tmp_path, log_path=tmp_path / "broker.log")
    async with first:
        await ensure_topics(first.bootstrap, [topics.fhir], partitions=2, replication_factor=1)
        producer = AIOKafkaProducer(**producer_config(KafkaSettings(), first.bootstrap, tansu=False))
        await producer.start()
        try:
            for n in range(50):
                await producer.send_and_wait(topics.fhir, f"r{n}".encode(), key=f"p{n % 5}".encode())
        finally:
            await producer.stop()
        first._proc.kill()  # no shutdown: what the OS had of the log is all there is
        first._proc.wait()
    async with EmbeddedKafka(tmp_path, log_path=tmp_path / "broker.log") as second:
        consumer = AIOKafkaConsumer(
            topics.fhir, bootstrap_servers=second.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            got = []
            for _ in range(20):
                got += [r.value for batch in (await consumer.getmany(timeout_ms=500)).values() for r in batch]
                if len(got) >= 50:
                    break
        finally:
            await consumer.stop()
    assert sorted(got) == sorted(f"r{n}".encode() for n in range(50))


def test_a_cluster_id_that_starts_with_a_dash_formats(tmp_path):
    """One random cluster id in 32 starts with '-': the storage tool took it for an option and
    refused ("expected one argument"), which failed a CI run."""
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    broker = EmbeddedKafka(tmp_path)
    config = tmp_path / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in broker.properties().items()))
    broker._format(config, attempts=1, cluster_id="-" + "A" * 21)
    assert (tmp_path / "log" / "meta.properties").is_file()


def test_a_failed_format_says_why(tmp_path):
    """CI once saw "formatting the embedded Kafka log failed: b''": the tool writes its reason on
    stderr, which the error left out. A configuration the tool refuses (no node id) must now name
    the exit code and the tool's own words."""
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    broker = EmbeddedKafka(tmp_path)
    config = tmp_path / "server.properties"
    config.write_text(f"process.roles=broker,controller\nlog.dirs={tmp_path / 'log'}\n")
    with pytest.raises(BrokerStartError) as raised:
        broker._format(config, attempts=1)
    message = str(raised.value)
    assert "exit code 1" in message
    assert "stderr b''" not in message


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read().lower()
    except OSError:
        return False


@pytest.mark.parametrize("kind", ["kafka", "tansu"])
async def test_stop_leaves_no_process(kind, tmp_path):
    embedded = EmbeddedKafka(tmp_path) if kind == "kafka" else EmbeddedBroker()
    async with embedded:
        pid = embedded.pid
        assert pid is not None
        assert _alive(pid)
    assert not _alive(pid)
