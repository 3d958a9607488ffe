"""Asyncio MLLP listener: each message is checked, written to Kafka, then acknowledged.

Order of events for one message: frame → parse MSH (and PID for the record key) → write
to `ehr.inbound.hl7v2.v1` keyed by patient → wait for the broker's confirmation
(acks=all) → ACK ``AA`` (``CA`` in enhanced mode). Unreadable or unacceptable input is
written to the dead-letter topic and answered ``AE``/``AR`` (``CE``/``CR``) with an ERR
segment. When the broker cannot confirm a write no ACK is sent and the connection is
closed, so the sender retries and nothing is lost. Frames on one connection are handled
one after another, which keeps their order into Kafka.

A frame holding an FHS/BHS batch (or several MSH messages) is split; every message is
handled as above and the ACKs go back together in one BHS … BTS batch.

Enhanced mode (MSH-15/MSH-16 present): commit ACKs are sent as MSH-15 asks (AL, NE, ER,
SU). Application acknowledgments (MSH-16) are not sent: acceptance here means "durably
queued"; mapping happens later and its failures go to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from prometheus_client import Counter, Histogram

from connectors.ack import (
    AckCode,
    Receiver,
    accept_ack_wanted,
    ack_code_for,
    build_ack,
    build_batch_ack,
)
from connectors.errors import BrokerUnavailableError, FramingError, RecordTooLargeError, SenderNotAllowedError
from connectors.framing import frame, split_frames
from connectors.kafka_sink import RecordSink, send_dead_letter
from kernel.errors import Hl7Error, Hl7ParseError, UnsupportedMessageError
from kernel.events import (
    SUPPORTED_HL7_EVENTS,
    DeadLetter,
    Lane,
    Topics,
    content_hash,
    deterministic_id,
    envelope_headers,
    patient_key,
)
from kernel.hl7v2.parser import (
    Message,
    check_header,
    decode_payload,
    parse_message,
    patient_identifier,
    split_batch,
)
from kernel.priority import LivePressure
from kernel.settings import MllpSettings

log = logging.getLogger(__name__)

MESSAGES = Counter("clinstream_mllp_messages", "MLLP messages answered", ["sender", "ack_code"])
BYTES = Counter("clinstream_mllp_bytes", "MLLP payload bytes received", ["sender"])
UNACKED = Counter("clinstream_mllp_unacknowledged", "MLLP messages left without ACK (broker down)")
ACK_LATENCY = Histogram(
    "clinstream_mllp_ack_seconds",
    "Message received → ACK ready (broker confirmed)",
    ["sender"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
_READ_CHUNK = 256 * 1024


class _SenderMetrics:
    """Prometheus children of one sender, looked up once (labels() costs per call)."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.bytes = BYTES.labels(sender)
        self.latency = ACK_LATENCY.labels(sender)
        self._acks: dict[str, Any] = {}

    def acks(self, code: str) -> Any:
        child = self._acks.get(code)
        if child is None:
            child = self._acks[code] = MESSAGES.labels(self.sender, code)
        return child


@functools.lru_cache(maxsize=1024)
def _sender_metrics(sender: str) -> _SenderMetrics:
    return _SenderMetrics(sender)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to answer for one message."""

    ack: bytes | None  # None: nothing to send for it (MSH-15 said so)
    stored: bool  # False: the broker did not confirm; no ACK may be sent at all


_NOT_STORED = Outcome(None, stored=False)


def server_ssl_context(settings: MllpSettings) -> ssl.SSLContext | None:
    """TLS context from the settings, or None for plain TCP."""
    if settings.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(settings.tls_client_ca)
    return ctx


def _may_hold_several(text: str) -> bool:
    """Cheap pre-check before splitting: a batch header, or a second MSH after a line break."""
    head = text.lstrip("\ufeff \t\r\n")[:3]
    return head in ("FHS", "BHS") or "\rMSH" in text or "\nMSH" in text


def record_key(msg: Message) -> str:
    """The Kafka key: the patient key; the sending system for a message the normalizer does not
    convert (a type outside `SUPPORTED_HL7_EVENTS`) that names no patient.

    The edge refuses what the normalizer could never convert: a message of a type it maps
    without a patient identity gets AE with an ERR naming PID-3 here, rather than AA and a
    dead letter the sender never hears of.

    Raises:
        MappingError: code 101 at PID-3, no PID or no usable patient identifier in it.
    """
    supported = (msg.message_code, msg.trigger_event) in SUPPORTED_HL7_EVENTS
    if msg.first("PID") is None and not supported:
        return deterministic_id("Sender", msg.sending_system)
    return patient_key(*patient_identifier(msg))


HOLD_HISTORY_S = 20.0
"""Longest a backfill message's ACK is held while live records are late (then it goes in anyway,
as a sender's ACK timeout is often 30 s)."""


class MllpServer:
    """The inbound HL7 v2 listener."""

    def __init__(
        self,
        sink: RecordSink,
        topics: Topics,
        settings: MllpSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lane: Lane = "live",
        pressure: LivePressure | None = None,
    ) -> None:
        self._sink = sink
        self._pressure = pressure
        self._lane: Lane = lane
        self._topics = topics
        self._settings = settings
        self._clock = clock
        self._receiver = Receiver(settings.receiving_application, settings.receiving_facility)
        self._server: asyncio.Server | None = None
        self._acks: OrderedDict[tuple[str, str], tuple[str, bytes]] = OrderedDict()
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ack_prefix = f"CS{secrets.token_hex(4)}"
        self._ack_counter = itertools.count(1)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("MLLP server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and start accepting connections."""
        context = server_ssl_context(self._settings)
        self._server = await asyncio.start_server(
            self._on_connection, self._settings.host, self._settings.port, ssl=context
        )
        log.info(
            "MLLP%s listening on %s:%d%s",
            " (backfill)" if self._lane == "backfill" else "",
            self._settings.host,
            self.port,
            " (TLS)" if context else "",
        )

    async def stop(self) -> None:
        """Stop accepting, close open connections."""
        if self._server is None:
            return
        self._server.close()
        # Closing the transports ends each handler's read with EOF; cancelling the handler
        # tasks instead makes asyncio log a CancelledError traceback per connection.
        for writer in list(self._writers):
            writer.close()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=5)
            for task in pending:
                task.cancel()
        await self._server.wait_closed()
        self._server = None

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception as exc:  # a bug must cost one connection, never the listener
            log.error("MLLP connection closed after an internal error (%s)", type(exc).__name__)
        finally:
            if task is not None:
                self._connections.discard(task)
            self._writers.discard(writer)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError, ssl.SSLError):
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while True:
            data = await reader.read(_READ_CHUNK)
            if not data:
                return
            buffer += data
            try:
                frames, buffer = split_frames(buffer, max_size=self._settings.max_message_bytes)
            except FramingError as exc:
                # We cannot tell where the next message starts: answer, keep the bytes, hang up.
                error = Hl7ParseError(str(exc), code=100, reject=True)
                outcome = await self._reject(None, buffer, error, cause=exc)
                if outcome.ack is not None:
                    writer.write(frame(outcome.ack))
                    await writer.drain()
                return
            for payload in frames:
                answer = await self.handle(payload)
                if answer is None:
                    UNACKED.inc()
                    return  # broker down: no ACK, close; the sender retries
                if answer:
                    writer.write(frame(answer))
                    await writer.drain()

    async def handle(self, payload: bytes) -> bytes | None:
        """Process one frame; the bytes to answer (empty: nothing), or None when nothing may be
        acknowledged because the broker did not confirm a write."""
        text = decode_payload(payload)
        batch = split_batch(text) if _may_hold_several(text) else None
        if batch is None or (not batch.enveloped and len(batch.messages) <= 1):
            outcome = await self._handle_message(text, payload)
            if not outcome.stored:
                return None
            return outcome.ack or b""
        acks: list[bytes] = []
        for message in batch.messages:
            outcome = await self._handle_message(message, message.encode("utf-8"))
            if not outcome.stored:
                return None
            if outcome.ack is not None:
                acks.append(outcome.ack)
        return build_batch_ack(
            acks, batch_control_id=self._next_ack_id(), now=self._clock(), receiver=self._receiver
        )

    async def _handle_message(self, text: str, payload: bytes) -> Outcome:
        if self._lane == "backfill" and self._pressure is not None:
            await self._pressure.quiet(max_wait_s=HOLD_HISTORY_S)  # live records first; the ACK waits
        started = time.perf_counter()
        msg: Message | None = None
        try:
            msg = parse_message(text)
            check_header(msg)
            self._check_sender(msg)
            self._check_type(msg)
            key = record_key(msg)
        except Hl7Error as exc:
            return await self._reject(msg, payload, exc)
        except SenderNotAllowedError as exc:
            error = Hl7Error(
                str(exc),
                code=207,
                segment="MSH",
                sequence=1,
                field=4,
                control_id=msg.control_id if msg else None,
                reject=True,
            )
            return await self._reject(msg, payload, error, cause=exc)

        sender = msg.sending_system
        metrics = _sender_metrics(sender)
        metrics.bytes.inc(len(payload))
        digest = content_hash(payload)
        dup_key = (sender, msg.control_id)
        previous = self._acks.get(dup_key)
        if previous is not None:
            if previous[0] == digest:  # a retransmission: same sender, control id and bytes
                self._acks.move_to_end(dup_key)
                log.info("duplicate control_id=%s from %s: original ACK returned", msg.control_id, sender)
                metrics.acks("duplicate").inc()
                return Outcome(previous[1] if accept_ack_wanted(msg, success=True) else None, stored=True)
            # Same control id, other content: a sender reusing ids (some reset them daily).
            # Dropping it would lose a message; store it and say so.
            log.warning(
                "control_id=%s from %s reused with different content: stored as a new message",
                msg.control_id,
                sender,
            )
            metrics.acks("control-id-reused").inc()

        trace_id = secrets.token_hex(16)
        headers = envelope_headers(  # the Envelope contract, built without model validation
            source_system=sender,
            source_message_id=msg.control_id,
            content_hash=digest,
            received_at=self._clock(),
            trace_id=trace_id,
            message_type=msg.message_type,
            lane=self._lane,
        )
        try:
            await self._sink.send(self._topics.inbound_hl7v2, payload, key=key.encode(), headers=headers)
        except BrokerUnavailableError:
            log.warning("broker unavailable: control_id=%s from %s not acknowledged", msg.control_id, sender)
            return _NOT_STORED
        except RecordTooLargeError as exc:  # AR: resending cannot help; the dead letter records its size
            error = Hl7Error(str(exc), code=207, segment="MSH", control_id=msg.control_id, reject=True)
            return await self._reject(msg, b"", error, cause=exc)
        ack = self._ack(msg, ack_code_for(msg, accepted=True, reject=False), None)
        if self._settings.duplicate_memory:
            self._acks[dup_key] = (digest, ack)
            if len(self._acks) > self._settings.duplicate_memory:
                self._acks.popitem(last=False)
        metrics.latency.observe(time.perf_counter() - started)
        log.debug("accepted control_id=%s type=%s trace=%s", msg.control_id, msg.message_type, trace_id)
        return Outcome(ack if accept_ack_wanted(msg, success=True) else None, stored=True)

    def _check_sender(self, msg: Message) -> None:
        allowed = self._settings.allowed_senders
        if allowed and msg.msh.value(4) not in allowed and msg.sending_system not in allowed:
            raise SenderNotAllowedError("sending facility is not allowed on this interface")

    def _check_type(self, msg: Message) -> None:
        accepted = self._settings.accepted_message_types
        if not accepted or any(fnmatchcase(msg.message_type, pattern) for pattern in accepted):
            return
        known_code = any(fnmatchcase(msg.message_code, p.split("^")[0]) for p in accepted)
        raise UnsupportedMessageError(
            f"message type {msg.message_type} is not accepted by this interface",
            code=201 if known_code else 200,
            segment="MSH",
            sequence=1,
            field=9,
            control_id=msg.control_id,
            reject=True,
        )

    async def _reject(
        self, msg: Message | None, payload: bytes, error: Hl7Error, *, cause: Exception | None = None
    ) -> Outcome:
        if error.control_id is None and msg is not None and msg.control_id:
            error.control_id = msg.control_id
        letter = DeadLetter.from_error(cause or error, stage="connectors.mllp", payload=payload)
        try:
            await send_dead_letter(self._sink, self._topics.deadletter, letter)
        except BrokerUnavailableError:
            # The dead letter is not stored: do not claim anything to the sender; it retries.
            log.warning("broker unavailable: rejected message not dead-lettered, no ACK sent")
            return _NOT_STORED
        code = ack_code_for(msg, accepted=False, reject=error.reject)
        log.info(
            "%s control_id=%s code=%d location=%s: %s",
            code,
            error.control_id,
            error.code,
            error.location or "-",
            error.reason,
        )
        ack = self._ack(msg, code, error)
        wanted = msg is None or accept_ack_wanted(msg, success=False)
        return Outcome(ack if wanted else None, stored=True)

    def _next_ack_id(self) -> str:
        """Unique ACK control ids: a per-process prefix and a counter."""
        return f"{self._ack_prefix}{next(self._ack_counter)}"

    def _ack(self, msg: Message | None, code: AckCode, error: Hl7Error | None) -> bytes:
        _sender_metrics(msg.sending_system if msg is not None else "unknown").acks(code).inc()
        return build_ack(
            msg,
            code,
            ack_control_id=self._next_ack_id(),
            now=self._clock(),
            receiver=self._receiver,
            error=error,
        )
