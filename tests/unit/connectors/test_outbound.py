"""Outbound delivery: MLLP reconnect/backoff/ACK reconciliation, FHIR write-back retries."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from connectors.ack import Receiver, build_ack
from connectors.app import register_outbound_fhir, register_outbound_mllp
from connectors.fhir_client import FhirWriter, retry_after_s
from connectors.framing import frame, split_frames
from connectors.mllp_client import OutboundMllp
from kernel.events import DeadLetter, Topics, WritebackOutcome
from kernel.hl7v2.parser import parse_message
from tests.fakes import collected

ORU = (
    b"MSH|^~\\&|CLINSTREAM|HUB|EHR|HOSP|202503060830||ORU^R01^ORU_R01|OUT%d|P|2.5.1\r"
    b"PID|1||100002^^^MERCY^MR\rOBX|1|ST|ALERT^Critical potassium^L||K 6.4||||||F\r"
)
NOW = datetime(2025, 3, 6, tzinfo=UTC)
TOPICS = Topics()


def _ack(payload, code):
    return build_ack(parse_message(payload.decode()), code, ack_control_id="A", now=NOW, receiver=Receiver())


class ScriptedPeer:
    """A local MLLP endpoint that answers each received message per a script of actions."""

    def __init__(self, script):
        self.script = list(script)  # "AA", "AE", "AR", "drop", "silent", "stale+AA"
        self.received = []
        self.connections = 0

    async def handle(self, reader, writer):
        self.connections += 1
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                frames, buffer = split_frames(buffer)
                for payload in frames:
                    self.received.append(payload)
                    action = self.script.pop(0) if self.script else "AA"
                    if action == "drop":
                        writer.close()
                        return
                    if action == "silent":
                        continue
                    if action.startswith("stale+"):
                        writer.write(frame(_ack(payload.replace(b"|OUT", b"|OLD"), "AA")))
                        action = action.split("+")[1]
                    writer.write(frame(_ack(payload, action)))
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


async def _no_sleep(_):
    return None


def _client(port, **kw):
    return OutboundMllp("127.0.0.1", port, sleep=_no_sleep, **kw)


async def test_delivered_on_aa():
    async with ScriptedPeer(["AA"]) as peer:
        client = _client(peer.port)
        result = await client.deliver(ORU % 1)
        await client.close()
    assert (result.outcome, result.code, result.attempts, result.control_id) == ("delivered", "AA", 1, "OUT1")


async def test_reconnects_after_a_dropped_connection():
    async with ScriptedPeer(["drop", "AA"]) as peer:
        client = _client(peer.port)
        result = await client.deliver(ORU % 2)
        await client.close()
    assert (result.outcome, result.attempts) == ("delivered", 2)
    assert peer.connections == 2
    assert peer.received == [ORU % 2, ORU % 2]


async def test_ae_is_final_and_ar_is_retried():
    async with ScriptedPeer(["AE", "AR", "AA"]) as peer:
        client = _client(peer.port)
        rejected = await client.deliver(ORU % 3)
        retried = await client.deliver(ORU % 4)
        await client.close()
    assert (rejected.outcome, rejected.code, rejected.attempts) == ("rejected", "AE", 1)
    assert (retried.outcome, retried.attempts) == ("delivered", 2)


async def test_stale_acks_are_skipped_by_control_id():
    async with ScriptedPeer(["stale+AA"]) as peer:
        client = _client(peer.port)
        result = await client.deliver(ORU % 5)
        await client.close()
    assert (result.outcome, result.attempts) == ("delivered", 1)


async def test_timeouts_exhaust_the_attempts_with_backoff():
    waits = []

    async def record(seconds):
        waits.append(seconds)

    async with ScriptedPeer(["silent"] * 3) as peer:
        client = OutboundMllp(
            "127.0.0.1",
            peer.port,
            sleep=record,
            ack_timeout_s=0.2,
            max_attempts=3,
            backoff_initial_s=1,
            backoff_max_s=1.5,
        )
        result = await client.deliver(ORU % 6)
        await client.close()
    assert (result.outcome, result.code, result.attempts) == ("failed", "timeout", 3)
    assert waits == [1, 1.5]


async def test_unreachable_endpoint_fails_without_hanging():
    client = _client(1, max_attempts=2, connect_timeout_s=1)
    result = await client.deliver(ORU % 7)
    assert (result.outcome, result.code) == ("failed", "connection")


def _writer(handler, **kw):
    waits = []

    async def record(seconds):
        waits.append(seconds)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return FhirWriter(client, "https://ehr.example/fhir/", sleep=record, **kw), waits


RESOURCE = {
    "resourceType": "Flag",
    "id": "abc",
    "status": "active",
    "code": {"text": "Critical potassium"},
    "subject": {"reference": "Patient/p1"},
}


async def test_put_uses_the_deterministic_id():
    seen = []

    def handler(request):
        seen.append((request.method, str(request.url), request.headers["content-type"]))
        return httpx.Response(201, json=RESOURCE)

    writer, _ = _writer(handler)
    result = await writer.put(RESOURCE)
    assert (result.outcome, result.status, result.attempts, result.reference) == (
        "delivered",
        "201",
        1,
        "Flag/abc",
    )
    assert seen == [("PUT", "https://ehr.example/fhir/Flag/abc", "application/fhir+json")]


@pytest.mark.parametrize("first", [409, 412, 500, 503])
async def test_transient_statuses_are_retried(first):
    answers = iter([httpx.Response(first), httpx.Response(200, json=RESOURCE)])
    writer, waits = _writer(lambda _: next(answers), backoff_initial_s=0.25)
    result = await writer.put(RESOURCE)
    assert (result.outcome, result.attempts) == ("delivered", 2)
    assert waits == [0.25]


async def test_429_honours_retry_after():
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200)])
    writer, waits = _writer(lambda _: next(answers))
    assert (await writer.put(RESOURCE)).outcome == "delivered"
    assert waits == [7.0]


async def test_other_4xx_are_final_and_keep_only_issue_codes():
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Patient SMITH not found"}],
    }
    writer, waits = _writer(lambda _: httpx.Response(422, json=outcome))
    result = await writer.put(RESOURCE)
    assert (result.outcome, result.status, result.issues) == ("rejected", "422", ("invalid",))
    assert waits == []


async def test_network_errors_exhaust_attempts():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    writer, waits = _writer(handler, max_attempts=3, backoff_initial_s=1)
    result = await writer.put(RESOURCE)
    assert (result.outcome, result.status, result.attempts) == ("failed", "connection", 3)
    assert waits == [1, 2]


def test_retry_after_parsing():
    assert retry_after_s("12", default=1, cap=30) == 12
    assert retry_after_s("999", default=1, cap=30) == 30
    assert retry_after_s(None, default=1, cap=30) == 1
    assert retry_after_s("garbage", default=2, cap=30) == 2
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8 <= retry_after_s(soon, default=1, cap=30) <= 10


# The outbound subscribers (connectors.app) on FastStream's in-memory broker: each record is
# delivered, its outcome recorded on the write-back topic, and what cannot be delivered or
# read is dead-lettered instead of retried forever.


async def test_outbound_mllp_subscriber_records_outcomes_and_dead_letters_refusals():
    broker = KafkaBroker()
    outcomes, dead = collected(broker, TOPICS.writeback), collected(broker, TOPICS.deadletter)
    async with ScriptedPeer(["AA", "AE"]) as peer:
        register_outbound_mllp(broker, TOPICS, _client(peer.port, max_attempts=1))
        async with TestKafkaBroker(broker) as br:
            await br.publish(ORU % 1, topic=TOPICS.outbound_hl7v2, key=b"p1")
            await br.publish(ORU % 2, topic=TOPICS.outbound_hl7v2, key=b"p1")
            await br.publish(b"not hl7", topic=TOPICS.outbound_hl7v2, key=b"p1")
        assert peer.received == [ORU % 1, ORU % 2]
    written = [WritebackOutcome.model_validate_json(o) for o in outcomes]
    assert [(o.channel, o.target, o.outcome, o.status) for o in written] == [
        ("mllp", "OUT1", "delivered", "AA"),
        ("mllp", "OUT2", "rejected", "AE"),
    ]
    letters = [DeadLetter.model_validate_json(d) for d in dead]
    assert [(d.stage, d.error_type) for d in letters] == [
        ("connectors.outbound", "DeliveryError"),
        ("connectors.outbound", "Hl7ParseError"),
    ]
    assert letters[0].payload == ORU % 2


async def test_outbound_fhir_subscriber_puts_each_resource_and_dead_letters_garbage():
    puts = []

    def handler(request):
        puts.append((request.method, request.url.path))
        return httpx.Response(201 if request.url.path.endswith("/abc") else 422, json={})

    writer, _ = _writer(handler, max_attempts=1)
    broker = KafkaBroker()
    register_outbound_fhir(broker, TOPICS, writer)
    outcomes, dead = collected(broker, TOPICS.writeback), collected(broker, TOPICS.deadletter)
    refused = {**RESOURCE, "id": "zzz"}
    async with TestKafkaBroker(broker) as br:
        await br.publish(json.dumps(RESOURCE).encode(), topic=TOPICS.outbound_fhir, key=b"p1")
        await br.publish(json.dumps(refused).encode(), topic=TOPICS.outbound_fhir, key=b"p1")
        await br.publish(b"{not json", topic=TOPICS.outbound_fhir, key=b"p1")
    assert puts == [("PUT", "/fhir/Flag/abc"), ("PUT", "/fhir/Flag/zzz")]
    written = [WritebackOutcome.model_validate_json(o) for o in outcomes]
    assert [(o.target, o.outcome, o.status) for o in written] == [
        ("Flag/abc", "delivered", "201"),
        ("Flag/zzz", "rejected", "422"),
    ]
    letters = [DeadLetter.model_validate_json(d).error_type for d in dead]
    assert letters == ["DeliveryError", "JSONDecodeError"]
