"""A secured backbone: the embedded Apache Kafka with a SASL_SSL listener (TLS from a PEM
keystore; PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 users), reached only through
`CLINSTREAM_KAFKA__SECURITY_PROTOCOL` and friends, and the HTTP API over TLS.

Each mechanism carries records both ways through aiokafka and librdkafka; a wrong password, a
plaintext client and an untrusted certificate are refused. Then the whole stack runs against the
secured listener alone, so every producer, consumer and admin client it opens must log in: HL7
in over MLLP, acknowledged, searchable over HTTPS, its audit trail readable; plain HTTP gets no
answer, and the agent tools' backend (the deployment's own API) is reached over TLS too.
"""

import asyncio
import logging
import re
import ssl
import time

import httpx
import jwt
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from clinstream.demo import demo_messages
from clinstream.runtime import EmbeddedKafka, SaslSslListener, ensure_topics, missing_reason
from clinstream.settings import Settings
from clinstream.stack import running_stack
from connectors.errors import BrokerUnavailableError
from connectors.kafka_sink import LibrdkafkaSink
from connectors.mllp_client import MllpClient
from kernel.events import patient_key
from kernel.replay_kafka import read_topic
from kernel.settings import KafkaSettings, kafka_security, librdkafka_security, producer_config
from tests.certs import self_signed
from tests.integration.stack.test_ecosystem import feed_identifiers

pytestmark = pytest.mark.integration
USER, PASSWORD = "clinstream", "backbone-secret-7f3a"
JWT_SECRET = "secured-backbone-jwt-secret-of-32-chars"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    if missing_reason() is not None:
        pytest.skip(missing_reason())
    folder = tmp_path_factory.mktemp("secured-kafka")
    cert, key = self_signed(folder / "tls")
    keystore = folder / "tls" / "keystore.pem"
    keystore.write_bytes(key.read_bytes() + cert.read_bytes())
    broker = EmbeddedKafka(
        folder / "data",
        log_path=folder / "broker.log",
        sasl_ssl=SaslSslListener(keystore, {USER: PASSWORD}),
    )
    broker.start()
    asyncio.run(broker.wait_ready())
    yield broker, cert
    broker.stop()


def _settings(ca, mechanism, password=PASSWORD, protocol="SASL_SSL"):
    return KafkaSettings(
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=USER,
        sasl_password=password,
        ssl_ca_file=ca,
        request_timeout_ms=3000,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_each_mechanism_carries_records_through_both_clients(secured, mechanism):
    broker, ca = secured
    kafka = _settings(ca, mechanism)
    bootstrap = f"127.0.0.1:{broker.secure_port}"
    topic = f"secured-{mechanism.lower()}"
    await ensure_topics(
        bootstrap, [topic], partitions=2, replication_factor=1, security=kafka_security(kafka)
    )
    producer = AIOKafkaProducer(**producer_config(kafka, bootstrap, tansu=False))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"via aiokafka", key=b"p1")
    finally:
        await producer.stop()
    sink = LibrdkafkaSink(
        producer_config(kafka, bootstrap, tansu=False),
        confirm_timeout_s=15,
        security=librdkafka_security(kafka),
    )
    await sink.start()
    try:
        await sink.send(topic, b"via librdkafka", key=b"p2", headers=[])
    finally:
        await sink.stop()
    got = await read_topic(bootstrap, topic, security=kafka_security(kafka))
    assert sorted(r.value for r in got) == [b"via aiokafka", b"via librdkafka"]


async def _write(kafka, bootstrap):
    producer = AIOKafkaProducer(**producer_config(kafka, bootstrap, tansu=False))
    try:
        async with asyncio.timeout(15):
            await producer.start()
            await producer.send_and_wait("secured-refused", b"x")
    finally:
        await producer.stop()


async def test_wrong_credentials_plaintext_and_untrusted_certificates_are_refused(secured, tmp_path):
    broker, ca = secured
    bootstrap = f"127.0.0.1:{broker.secure_port}"
    other_ca, _ = self_signed(tmp_path / "other", name="not-the-broker")
    for kafka in (
        _settings(ca, "SCRAM-SHA-512", password="wrong-password"),
        _settings(ca, "PLAIN", password="wrong-password"),
        _settings(other_ca, "SCRAM-SHA-512"),
        KafkaSettings(),  # PLAINTEXT against the TLS port
    ):
        with pytest.raises((KafkaError, OSError, TimeoutError)):
            await _write(kafka, bootstrap)
    sink = LibrdkafkaSink(
        producer_config(KafkaSettings(), bootstrap, tansu=False),
        confirm_timeout_s=3,
        security=librdkafka_security(_settings(ca, "SCRAM-SHA-256", password="wrong-password")),
    )
    with pytest.raises(BrokerUnavailableError):
        await sink.start()


def test_sasl_without_a_login_is_a_configuration_error():
    with pytest.raises(ValueError, match="SASL_USERNAME"):
        kafka_security(KafkaSettings(security_protocol="SASL_SSL"))


async def test_the_whole_stack_runs_on_the_secured_listener_alone(secured, tmp_path, caplog):
    """… and at DEBUG, with every library's loggers on, no secret and no identifier of the
    feed's patients is written to a log."""
    caplog.set_level(logging.DEBUG)
    broker, ca = secured
    cert, key = self_signed(tmp_path / "https")
    settings = Settings(
        var_dir=tmp_path,
        kafka={
            "bootstrap": f"127.0.0.1:{broker.secure_port}",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": USER,
            "sasl_password": PASSWORD,
            "ssl_ca_file": ca,
        },
        mllp={"port": 0},
        http={
            "port": 0,
            "api_token": "secured-backbone-token",
            "tls_cert": cert,
            "tls_key": key,
            "jwt_hs256_secret": JWT_SECRET,
        },
        notes={"enabled": False},
        assist={"enabled": False},
        dashboard={"enabled": False},
    )
    auth = {"Authorization": "Bearer secured-backbone-token"}
    jane = patient_key("MERCY", "100001")
    async with running_stack(settings) as stack:
        async with MllpClient("127.0.0.1", stack.mllp_port) as client:
            codes = [(await client.send(m)).code for m in demo_messages()]
        assert codes.count("AA") >= 30
        trusted = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{stack.http_port}"
        async with httpx.AsyncClient(base_url=base, verify=trusted, timeout=60) as http:
            deadline, hits = time.monotonic() + 90, []
            while not hits and time.monotonic() < deadline:
                r = await http.post(
                    "/query", json={"patient_id": jane, "question": "potassium"}, headers=auth
                )
                assert r.status_code == 200
                hits = r.json()["results"]
                await asyncio.sleep(1)
            assert hits
            trail = await http.get(f"/audit/events?patient={jane}", headers=auth)
            claims = {"sub": "agent", "exp": int(time.time()) + 60, "scope": "patient/*.rs", "patient": jane}
            agent = {"Authorization": "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")}
            tool = await http.post("/agent/tools/patient_timeline", json={"patient_id": jane}, headers=agent)
        assert trail.status_code == 200
        assert any(e["action"] == "POST /query" for e in trail.json()["events"])
        assert tool.status_code == 200, tool.text  # its backend is this API, over TLS
        assert tool.json()["results"]
        async with httpx.AsyncClient(base_url=base, timeout=10) as untrusting:
            with pytest.raises(httpx.ConnectError):  # the system store does not know the certificate
                await untrusting.get("/health")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", timeout=10) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/health")
    logged = caplog.text + "".join(
        p.read_text(errors="replace") for p in tmp_path.rglob("*.log") if p.is_file()
    )
    assert len(caplog.records) > 1000  # DEBUG was on: the check read something
    secrets_ = [PASSWORD, JWT_SECRET, "secured-backbone-token", agent["Authorization"].split()[1]]
    assert [s for s in secrets_ if s in logged] == []
    named = [v for v in feed_identifiers() if re.search(rf"(?<![\w.]){re.escape(v)}(?![\w])", logged)]
    leaking = {r.name for r in caplog.records for v in named[:3] if v in r.getMessage()}
    assert named == [], leaking
