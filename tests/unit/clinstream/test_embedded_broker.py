"""Which embedded broker `clinstream up` starts, and the Apache Kafka it would start."""

import logging

import pytest

from clinstream import kafka_dist, runtime
from clinstream.runtime import EmbeddedBroker, EmbeddedKafka, embedded_broker
from kernel.settings import KafkaSettings


def test_apache_kafka_is_the_default_with_its_log_under_the_var_dir(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(runtime, "missing_reason", lambda: None)
    with caplog.at_level(logging.WARNING):
        broker = embedded_broker(KafkaSettings(), tmp_path)
    assert isinstance(broker, EmbeddedKafka)
    assert (broker.kind, broker.transactional) == ("kafka", True)
    assert broker.data_dir == tmp_path / "kafka"
    assert caplog.records == []


def test_without_java_it_falls_back_to_tansu_and_says_acks_are_not_durable(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(runtime, "missing_reason", lambda: "no Java runtime on the PATH")
    with caplog.at_level(logging.WARNING):
        broker = embedded_broker(KafkaSettings(), tmp_path)
    assert type(broker) is EmbeddedBroker
    assert (broker.kind, broker.transactional) == ("tansu", False)
    text = caplog.text
    assert "no Java runtime" in text
    assert "lost if it stops" in text


def test_tansu_when_asked_for_warns_too(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        broker = embedded_broker(KafkaSettings(embedded_broker="tansu"), tmp_path)
    assert broker.kind == "tansu"
    assert "in memory" in caplog.text


def test_the_broker_configuration_is_single_node_and_takes_the_largest_record(tmp_path):
    broker = EmbeddedKafka(tmp_path, port=19092, max_record_bytes=64 * 1024 * 1024)
    props = broker.properties()
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"].startswith("PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:")
    assert props["log.dirs"] == str(tmp_path / "log")
    assert int(props["message.max.bytes"]) > 64 * 1024 * 1024
    assert props["transaction.state.log.replication.factor"] == "1"


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
    ],
)
def test_java_versions_are_read_from_java_version(monkeypatch, output, major):
    class Done:
        stdout, stderr = "", output

    monkeypatch.setattr(kafka_dist.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(kafka_dist.subprocess, "run", lambda *a, **k: Done())
    assert kafka_dist.java_major() == major


def test_an_old_java_or_a_missing_broker_is_a_reason_not_to_start(monkeypatch, tmp_path):
    monkeypatch.setattr(kafka_dist, "java_major", lambda: 11)
    assert "Java 11" in (kafka_dist.missing_reason(tmp_path) or "")
    monkeypatch.setattr(kafka_dist, "java_major", lambda: 17)
    assert "make kafka" in (kafka_dist.missing_reason(tmp_path) or "")
    lib = kafka_dist.kafka_lib(tmp_path)
    lib.mkdir(parents=True)
    (lib / f"kafka_2.13-{kafka_dist.kafka_version()}.jar").write_bytes(b"")
    assert kafka_dist.missing_reason(tmp_path) is None
