"""MLLP features an interface engine relies on: batches, enhanced mode, allow-list, TLS, the corpus."""

import asyncio
import base64
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.framing import frame, split_frames
from connectors.mllp_client import MllpClient, ack_code
from connectors.mllp_server import MllpServer
from kernel.events import DeadLetter, Envelope, Topics, deterministic_id
from kernel.hl7v2.parser import parse_message, split_batch
from kernel.settings import MllpSettings
from tests.certs import self_signed
from tests.conftest import hl7_corpus_files
from tests.fakes import MemorySink
from tests.unit.connectors.fixtures import ORU

TOPICS = Topics()


async def _server(**settings):
    sink = MemorySink()
    srv = MllpServer(sink, TOPICS, MllpSettings(port=0, **settings))
    await srv.start()
    return srv, sink


async def _exchange(port, payloads, n_answers, ssl_ctx=None, timeout=10):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_ctx)
    writer.write(b"".join(frame(p) for p in payloads))
    await writer.drain()
    buffer, answers = b"", []
    try:
        async with asyncio.timeout(timeout):
            while len(answers) < n_answers:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
                frames, buffer = split_frames(buffer)
                answers.extend(frames)
    except TimeoutError:
        pass
    finally:
        writer.close()
    return answers


def test_split_batch_drops_the_envelope_and_keeps_order():
    text = "FHS|^~\\&|A\rBHS|^~\\&|A\rMSH|^~\\&|1\rPID|1\rMSH|^~\\&|2\rPID|2\rBTS|2\rFTS|1\r"
    batch = split_batch(text)
    assert batch.enveloped
    assert batch.messages == ["MSH|^~\\&|1\rPID|1\r", "MSH|^~\\&|2\rPID|2\r"]
    assert split_batch("PID|orphan\nMSH|^~\\&|1\n").messages == ["PID|orphan\r", "MSH|^~\\&|1\r"]


async def test_batch_in_one_frame_gets_one_batch_ack_in_order():
    srv, sink = await _server()
    good1, bad, good2 = ORU % 1, ORU.replace(b"100002^^^MERCY^MR", b"") % 2, ORU % 3
    batch = b"FHS|^~\\&|LIS\rBHS|^~\\&|LIS\r" + good1 + bad + good2 + b"BTS|3\rFTS|1\r"
    [answer] = await _exchange(srv.port, [batch], 1)
    await srv.stop()
    text = answer.decode()
    assert text.startswith("BHS|")
    assert text.endswith("BTS|3\r")
    acks = split_batch(text).messages
    assert [parse_message(a).first("MSA").value(1) for a in acks] == ["AA", "AE", "AA"]
    assert [parse_message(a).first("MSA").value(2) for a in acks] == ["LAB1", "LAB2", "LAB3"]
    assert [
        Envelope.from_headers(h).source_message_id for t, _, _, h in sink.records if t == TOPICS.inbound_hl7v2
    ] == ["LAB1", "LAB3"]


def _enhanced(n, accept):
    return ORU.replace(b"|P|2.5.1\r", f"|P|2.5.1|||{accept}|NE\r".encode()) % n


async def test_enhanced_mode_sends_commit_acks_as_msh15_asks():
    srv, sink = await _server()
    bad_er = _enhanced(4, "ER").replace(b"100002^^^MERCY^MR", b"")
    answers = await _exchange(
        srv.port, [_enhanced(1, "NE"), _enhanced(2, "SU"), _enhanced(3, "ER"), bad_er, _enhanced(5, "AL")], 3
    )
    await srv.stop()
    got = [
        (parse_message(a.decode()).first("MSA").value(1), parse_message(a.decode()).first("MSA").value(2))
        for a in answers
    ]
    assert got == [("CA", "LAB2"), ("CE", "LAB4"), ("CA", "LAB5")]
    assert len([r for r in sink.records if r[0] == TOPICS.inbound_hl7v2]) == 4  # NE and ER were stored too


async def test_sender_allow_list():
    srv, sink = await _server(allowed_senders=("OTHER_LAB", "LIS^MERCY_LAB"))
    async with MllpClient("127.0.0.1", srv.port) as client:
        allowed = await client.send(ORU % 1)
        refused = await client.send(ORU.replace(b"LIS|MERCY_LAB", b"LIS|ROGUE") % 2)
    await srv.stop()
    assert allowed.code == "AA"
    assert refused.code == "AR"
    assert b"207^Application internal error^HL70357" in refused.raw
    letter = DeadLetter.model_validate_json(sink.records[-1][1])
    assert letter.error_type == "SenderNotAllowedError"


async def test_message_without_pid_is_accepted_and_keyed_by_sender():
    srv, sink = await _server()
    mfn = b"MSH|^~\\&|MDM|HOSP|EHR|HOSP|202503060830||MFN^M02|MF1|P|2.5.1\rMFI|PRA\r"
    async with MllpClient("127.0.0.1", srv.port) as client:
        assert (await client.send(mfn)).code == "AA"
    await srv.stop()
    assert sink.records[0][2] == deterministic_id("Sender", "MDM^HOSP").encode()


async def test_mllp_over_tls(tmp_path):
    cert, key = self_signed(tmp_path)
    srv, sink = await _server(tls_cert=cert, tls_key=key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = False
    async with MllpClient("127.0.0.1", srv.port, ssl=client_ctx) as client:
        assert (await client.send(ORU % 1)).code == "AA"
    # A plain-TCP client gets nothing, and nothing is stored.
    answers = await _exchange(srv.port, [ORU % 2], 1, timeout=3)
    await srv.stop()
    assert answers == []
    assert len(sink.records) == 1


async def test_mutual_tls_requires_a_client_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    srv, sink = await _server(tls_cert=cert, tls_key=key, tls_client_ca=cert)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = False

    async def without_client_certificate():
        async with MllpClient("127.0.0.1", srv.port, ssl=client_ctx) as client:
            result = await client.send(ORU % 1)
            if result.code is None:
                raise ConnectionError("no ACK")

    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await without_client_certificate()
    client_ctx.load_cert_chain(cert, key)
    async with MllpClient("127.0.0.1", srv.port, ssl=client_ctx) as client:
        assert (await client.send(ORU % 2)).code == "AA"
    await srv.stop()
    assert len(sink.records) == 1


BROKEN = {  # deliberately broken inputs in the corpus and what they must get
    "Hl7v2DataValidatorTests_001.hl7": "AR",  # MSH|||
    "Hl7v2DataValidatorTests_002.hl7": "AR",  # duplicate separators
    "Hl7v2DataValidatorTests_003.hl7": "AR",  # non-backslash escape, no MSH-9/10
    "Program_014.hl7": "AR",  # only three encoding characters
}


FOLLOW_UP = ORU.replace(b"LIS|MERCY_LAB", b"PROBE|PROBE") % 999_999


async def _answers_before_follow_up(port, payload, timeout=10):
    """The frames answering ``payload``, and whether the follow-up message was answered after them.

    Sending a follow-up on the same connection separates "no answer, as MSH-15 asked" from
    "hung": the follow-up's ACK (MSA-2 = LAB999999) arrives once the file was handled.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame(payload) + frame(FOLLOW_UP))
    await writer.drain()
    buffer, answers = b"", []
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    return answers, False
                buffer += data
                try:
                    frames, buffer = split_frames(buffer)
                except ValueError:
                    return answers, False
                for f in frames:
                    if b"MSA|AA|LAB999999" in f:
                        return answers, True
                    answers.append(f)
    finally:
        writer.close()


def _accept_ack_type(payload):
    batch = split_batch(payload.decode("utf-8", "replace"))
    if batch.enveloped or len(batch.messages) != 1:
        return ""
    try:
        return parse_message(batch.messages[0]).msh.value(15).upper()
    except ValueError:
        return ""


MALFORMED = {
    "MSH-10 message control id is missing",
    "MSH-9 message type is missing",
    "invalid encoding characters in MSH-2",
    "PID-3 patient identifier is missing",
    "PID-3 patient identifier is missing: the message has no PID segment",
    "message does not start with an MSH segment",
    "invalid segment id at segment 2",
    "invalid segment id at segment 3",
    "MSH segment too short",
    "data outside an MLLP frame",
}


def _reason(ack_text):
    """The diagnostic of our ERR (ERR-8 for v2.5+, MSA-3 text for older versions)."""
    msg = parse_message(ack_text)
    err = msg.first("ERR")
    return err.value(8) if err is not None and err.value(8) else msg.first("MSA").value(3)


async def test_every_corpus_file_over_a_socket_gets_an_answer():
    srv, sink = await _server()
    codes: dict[str, list[str | None]] = {}
    reasons: set[str] = set()
    for path in hl7_corpus_files():
        payload = path.read_bytes()
        answers, served_on = await _answers_before_follow_up(srv.port, payload)
        wanted = _accept_ack_type(payload)
        if not answers:
            # Only a sender who asked for no commit ACK on success may get silence.
            assert wanted in ("NE", "ER"), path.name
            assert served_on, path.name
            codes[path.name] = []
            continue
        assert len(answers) == 1, path.name
        text = answers[0].decode("utf-8", "replace")
        parts = split_batch(text).messages if text.startswith("BHS") else [text]
        codes[path.name] = [ack_code(p.encode()) for p in parts]
        for part in parts:
            if ack_code(part.encode()) in ("AE", "AR", "CE", "CR"):
                assert "HL70357" in part, path.name
                reasons.add(_reason(part))
    await srv.stop()
    # Every refusal in the corpus is for one of these defects (checked by hand, see README).
    assert reasons <= MALFORMED, reasons - MALFORMED
    for name, expected in BROKEN.items():
        assert codes[name] == [expected], name
    flat = [c for cs in codes.values() for c in cs]
    assert None not in flat
    silent = [n for n, c in codes.items() if not c]
    assert flat.count("AA") + flat.count("CA") + len(silent) >= 600
    inbound = [r for r in sink.records if r[0] == TOPICS.inbound_hl7v2]
    assert inbound


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=400) | st.text(max_size=300).map(lambda t: ("MSH|^~\\&|" + t).encode()))
async def test_arbitrary_payloads_get_an_answer_never_an_exception(payload):
    srv = MllpServer(MemorySink(), TOPICS, MllpSettings(port=0))
    answer = await srv.handle(payload)
    assert answer is not None
    if answer:
        text = answer.decode("utf-8", "replace")
        assert text.startswith(("MSH|", "BHS|"))


async def test_several_megabyte_message_with_base64_pdf():
    srv, sink = await _server(max_message_bytes=16 * 1024 * 1024)
    pdf = base64.b64encode(bytes(range(256)) * 20_000).decode()  # ~6.8 MB of base64
    big = (ORU % 1).replace(
        b"OBX|1|NM|2823-3^Potassium^LN||6.4|mmol/L|3.5-5.1|HH|||F\r",
        f"OBX|1|ED|PDF^Report^L||^application^pdf^Base64^{pdf}||||||F\r".encode(),
    )
    async with MllpClient("127.0.0.1", srv.port) as client:
        result = await client.send(big)
    await srv.stop()
    assert result.code == "AA"
    assert sink.records[0][1] == big


async def test_many_concurrent_connections_keep_their_own_order():
    srv, sink = await _server()

    async def connection(n):
        async with MllpClient("127.0.0.1", srv.port) as client:
            return [
                (await client.send(ORU.replace(b"LIS|MERCY_LAB", f"LIS{n}|LAB".encode()) % i)).code
                for i in range(10)
            ]

    codes = await asyncio.gather(*(connection(n) for n in range(50)))
    await srv.stop()
    assert all(c == ["AA"] * 10 for c in codes)
    by_sender = {}
    for _, _, _, headers in sink.records:
        envelope = Envelope.from_headers(headers)
        by_sender.setdefault(envelope.source_system, []).append(envelope.source_message_id)
    assert len(by_sender) == 50
    assert all(ids == [f"LAB{i}" for i in range(10)] for ids in by_sender.values())
