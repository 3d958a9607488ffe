"""The MLLP server over a real socket with an in-memory sink (the broker path is in integration/)."""

import asyncio
import json
import logging

import pytest

from connectors.framing import frame
from connectors.mllp_client import MllpClient
from connectors.mllp_server import MllpServer
from kernel.events import DeadLetter, Envelope, Topics, patient_key
from kernel.settings import MllpSettings
from tests.fakes import MemorySink
from tests.unit.connectors.fixtures import ORU

TOPICS = Topics()


@pytest.fixture
async def server():
    sink = MemorySink()
    srv = MllpServer(sink, TOPICS, MllpSettings(port=0, max_message_bytes=4096))
    await srv.start()
    yield srv, sink
    await srv.stop()


async def test_accepted_message_is_written_keyed_by_patient_then_acked(server):
    srv, sink = server
    async with MllpClient("127.0.0.1", srv.port) as client:
        result = await client.send(ORU % 1)
    assert result.code == "AA"
    [(topic, value, key, headers)] = sink.records
    assert topic == TOPICS.inbound_hl7v2
    assert value == ORU % 1
    assert key == patient_key("MERCY", "100002").encode()
    envelope = Envelope.from_headers(headers)
    assert envelope.source_message_id == "LAB1"
    assert b"100002" not in b"".join(headers.values())  # no PHI in headers


async def test_no_ack_before_the_broker_confirms(server):
    srv, sink = server
    sink.gate = asyncio.Event()
    async with MllpClient("127.0.0.1", srv.port) as client:
        pending = asyncio.create_task(client.send(ORU % 2))
        await asyncio.sleep(0.2)
        assert not pending.done(), "ACK was sent before the write was confirmed"
        sink.gate.set()
        assert (await pending).code == "AA"


async def test_broker_down_means_no_ack_and_connection_closed(server):
    srv, sink = server
    sink.fail = True
    async with MllpClient("127.0.0.1", srv.port) as client:
        result = await client.send(ORU % 3)
    assert result.code is None
    assert sink.records == []


async def test_malformed_message_gets_ar_and_a_dead_letter(server):
    srv, sink = server
    async with MllpClient("127.0.0.1", srv.port) as client:
        result = await client.send(b"MSH|^~&|LIS|LAB|EHR|H|2025||ORU^R01|X1|P|2.5.1\rPID|1||1\r")
        after = await client.send(ORU % 4)  # the connection stays usable
    assert result.code == "AR"
    assert b"ERR|" in result.raw
    assert after.code == "AA"
    topic, value, key, _ = sink.records[0]
    assert topic == TOPICS.deadletter
    assert key is None
    letter = DeadLetter.model_validate_json(value)
    assert (letter.error_type, letter.location, letter.error_code) == ("Hl7ParseError", "MSH-2", 102)
    assert letter.payload.startswith(b"MSH|^~&|")


async def test_missing_patient_identifier_gets_ae(server):
    srv, sink = server
    async with MllpClient("127.0.0.1", srv.port) as client:
        result = await client.send(ORU.replace(b"100002^^^MERCY^MR", b"") % 5)
    assert result.code == "AE"
    assert json.loads(sink.records[0][1])["location"] == "PID-3"


async def test_result_without_a_pid_gets_ae_naming_pid_3_not_aa(server):
    srv, sink = server
    no_pid = b"\r".join(line for line in (ORU % 7).split(b"\r") if not line.startswith(b"PID"))
    async with MllpClient("127.0.0.1", srv.port) as client:
        result = await client.send(no_pid)
    assert result.code == "AE"
    assert b"ERR|" in result.raw
    assert b"PID^1^3" in result.raw
    [(topic, value, _, _)] = sink.records
    assert topic == TOPICS.deadletter
    assert json.loads(value)["location"] == "PID-3"


async def test_message_larger_than_the_broker_takes_gets_ar_not_silence():
    sink = MemorySink(max_bytes=2_000)
    srv = MllpServer(sink, TOPICS, MllpSettings(port=0))
    await srv.start()
    big = (ORU % 8) + b"NTE|1||" + b"x" * 3_000 + b"\r"
    async with MllpClient("127.0.0.1", srv.port) as client:
        result = await client.send(big)
    await srv.stop()
    assert result.code == "AR"
    assert b"larger than the broker accepts" in result.raw
    [(topic, value, _, _)] = sink.records
    assert topic == TOPICS.deadletter
    assert DeadLetter.model_validate_json(value).payload == b""


async def test_type_outside_the_accept_list_gets_ar():
    sink = MemorySink()
    srv = MllpServer(sink, TOPICS, MllpSettings(port=0, accepted_message_types=("ADT^*", "ORU^R01")))
    await srv.start()
    async with MllpClient("127.0.0.1", srv.port) as client:
        known = await client.send(ORU.replace(b"ORU^R01^ORU_R01", b"ORU^R30") % 61)
        adt = await client.send(ORU.replace(b"ORU^R01^ORU_R01", b"ADT^A08") % 62)
        result = await client.send(ORU.replace(b"ORU^R01^ORU_R01", b"SIU^S12") % 6)
    await srv.stop()
    assert result.code == "AR"
    assert b"200^Unsupported message type^HL70357" in result.raw
    assert known.code == "AR"
    assert b"201^Unsupported event code^HL70357" in known.raw
    assert adt.code == "AA"
    assert [r[0] for r in sink.records] == [TOPICS.deadletter, TOPICS.inbound_hl7v2, TOPICS.deadletter]


async def test_duplicate_control_id_returns_the_original_ack_without_republishing(server):
    srv, sink = server
    async with MllpClient("127.0.0.1", srv.port) as client:
        first = await client.send(ORU % 7)
        second = await client.send(ORU % 7)
    assert first.raw == second.raw
    assert len(sink.records) == 1


async def test_order_on_one_connection_is_preserved(server):
    srv, sink = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"".join(frame(ORU % n) for n in range(100, 120)))  # pipelined
    await writer.drain()
    acks = 0
    buffer = b""
    while acks < 20:
        buffer += await reader.read(65536)
        acks = buffer.count(b"\x1c\r")
    writer.close()
    assert [Envelope.from_headers(h).source_message_id for *_, h in sink.records] == [
        f"LAB{n}" for n in range(100, 120)
    ]


async def test_framing_garbage_is_answered_and_connection_closed(server):
    srv, sink = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert b"MSA|AR|" in data
    assert DeadLetter.model_validate_json(sink.records[0][1]).error_type == "FramingError"
    assert sink.records[0][0] == TOPICS.deadletter


async def test_oversized_frame_is_refused(server):
    srv, sink = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"\x0b" + b"A" * 10_000)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert b"MSA|AR|" in data
    assert DeadLetter.model_validate_json(sink.records[0][1]).error_type == "FrameTooLargeError"


async def test_logs_carry_ids_never_patient_data(server, caplog):
    srv, sink = server
    caplog.set_level(logging.DEBUG)
    async with MllpClient("127.0.0.1", srv.port) as client:
        await client.send(ORU % 8)
        await client.send(ORU % 8)  # duplicate
        await client.send(ORU.replace(b"100002^^^MERCY^MR", b"") % 9)  # AE
        sink.fail = True
        await client.send(ORU % 10)  # broker down
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "LAB8" in text
    assert "LAB9" in text
    for phi in ("ROE", "RICHARD", "100002", "19471130"):
        assert phi not in text


async def test_reused_control_id_with_other_content_is_not_dropped(server):
    srv, sink = server
    async with MllpClient("127.0.0.1", srv.port) as client:
        first = await client.send(ORU % 77)
        other = await client.send((ORU % 77).replace(b"|6.4|", b"|5.1|"))
        again = await client.send((ORU % 77).replace(b"|6.4|", b"|5.1|"))  # true retransmission of the second
    assert (first.code, other.code, again.code) == ("AA", "AA", "AA")
    assert other.raw != first.raw
    assert again.raw == other.raw
    assert len([r for r in sink.records if r[0] == TOPICS.inbound_hl7v2]) == 2


async def test_the_backfill_listener_marks_what_it_takes_as_backfill_and_the_live_one_does_not():
    sink = MemorySink()
    live = MllpServer(sink, TOPICS, MllpSettings(port=0))
    history = MllpServer(sink, TOPICS, MllpSettings(port=0), lane="backfill")
    await live.start()
    await history.start()
    try:
        for srv, n in ((live, 1), (history, 2)):
            async with MllpClient("127.0.0.1", srv.port) as client:
                assert (await client.send(ORU % n)).code == "AA"
    finally:
        await live.stop()
        await history.stop()
    lanes = [Envelope.from_headers(headers).lane for _, _, _, headers in sink.records]
    assert lanes == ["live", "backfill"]
    assert "lane" not in dict(sink.records[0][3])  # a live record is as it always was
