"""Asyncio MLLP listener: each frame is checked, written to Kafka, then acknowledged.

Order of events for one message: frame → parse MSH and patient identifier → write to
`ehr.inbound.hl7v2.v1` keyed by patient → wait for the broker's confirmation (acks=all)
→ ACK ``AA``. Unreadable or unacceptable input is written to the dead-letter topic and
answered ``AE``/``AR`` with an ERR segment. When the broker cannot confirm a write no ACK
is sent and the connection is closed, so the sender retries and nothing is lost; frames
on one connection are handled one after another, which keeps their order into Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram

from connectors.ack import AckCode, Receiver, build_ack
from connectors.errors import BrokerUnavailableError, FramingError
from connectors.framing import frame, split_frames
from connectors.kafka_sink import RecordSink
from stream.errors import Hl7Error, Hl7ParseError, UnsupportedMessageError
from stream.events import (
    SUPPORTED_HL7_EVENTS,
    DeadLetter,
    Envelope,
    Topics,
    content_hash,
    patient_key,
)
from stream.hl7v2 import Message, check_header, decode_payload, parse_message, patient_identifier
from stream.settings import MllpSettings

log = logging.getLogger(__name__)

MESSAGES = Counter("clinstream_mllp_messages", "MLLP messages answered", ["sender", "ack_code"])
UNACKED = Counter("clinstream_mllp_unacknowledged", "MLLP messages left without ACK (broker down)")
ACK_LATENCY = Histogram(
    "clinstream_mllp_ack_seconds",
    "Frame received → ACK written",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
_READ_CHUNK = 64 * 1024
_DUPLICATE_MEMORY = 100_000


class MllpServer:
    """The inbound HL7 v2 listener."""

    def __init__(
        self,
        sink: RecordSink,
        topics: Topics,
        settings: MllpSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sink = sink
        self._topics = topics
        self._settings = settings
        self._clock = clock
        self._receiver = Receiver(settings.receiving_application, settings.receiving_facility)
        self._server: asyncio.Server | None = None
        self._acks: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("MLLP server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._server = await asyncio.start_server(
            self._on_connection, self._settings.host, self._settings.port
        )
        log.info("MLLP listening on %s:%d", self._settings.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, close open connections."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
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
                ack = await self._reject(None, buffer, error, cause=exc)
                if ack is not None:
                    writer.write(frame(ack))
                    await writer.drain()
                return
            for payload in frames:
                started = time.perf_counter()
                ack = await self.handle(payload)
                if ack is None:
                    UNACKED.inc()
                    return  # broker down: no ACK, close; the sender retries
                writer.write(frame(ack))
                await writer.drain()
                ACK_LATENCY.observe(time.perf_counter() - started)

    async def handle(self, payload: bytes) -> bytes | None:
        """Process one message payload; the ACK to send, or None when nothing may be acknowledged."""
        msg: Message | None = None
        try:
            msg = parse_message(decode_payload(payload))
            check_header(msg)
            if (msg.message_code, msg.trigger_event) not in SUPPORTED_HL7_EVENTS:
                known_code = any(code == msg.message_code for code, _ in SUPPORTED_HL7_EVENTS)
                raise UnsupportedMessageError(
                    f"message type {msg.message_type} is not accepted by this interface",
                    code=201 if known_code else 200,
                    segment="MSH",
                    sequence=1,
                    field=9,
                    control_id=msg.control_id,
                    reject=True,
                )
            authority, identifier = patient_identifier(msg)
        except Hl7Error as exc:
            return await self._reject(msg, payload, exc)

        dup_key = (msg.sending_system, msg.control_id)
        previous = self._acks.get(dup_key)
        if previous is not None:
            self._acks.move_to_end(dup_key)
            log.info(
                "duplicate control_id=%s from %s: original ACK returned", msg.control_id, msg.sending_system
            )
            MESSAGES.labels(msg.sending_system, "duplicate").inc()
            return previous

        received_at = self._clock()
        envelope = Envelope(
            source_system=msg.sending_system,
            source_message_id=msg.control_id,
            content_hash=content_hash(payload),
            received_at=received_at,
            trace_id=uuid.uuid4().hex,
            message_type=msg.message_type,
        )
        key = patient_key(authority, identifier)
        try:
            await self._sink.send(
                self._topics.inbound_hl7v2, payload, key=key.encode(), headers=envelope.to_headers()
            )
        except BrokerUnavailableError:
            log.warning(
                "broker unavailable: control_id=%s from %s not acknowledged",
                msg.control_id,
                msg.sending_system,
            )
            return None
        ack = self._ack(msg, "AA", None)
        self._acks[dup_key] = ack
        if len(self._acks) > _DUPLICATE_MEMORY:
            self._acks.popitem(last=False)
        log.debug(
            "accepted control_id=%s type=%s trace=%s", msg.control_id, msg.message_type, envelope.trace_id
        )
        return ack

    async def _reject(
        self, msg: Message | None, payload: bytes, error: Hl7Error, *, cause: Exception | None = None
    ) -> bytes | None:
        if error.control_id is None and msg is not None and msg.control_id:
            error.control_id = msg.control_id
        letter = DeadLetter.from_error(cause or error, stage="connectors.mllp", payload=payload)
        try:
            await self._sink.send(
                self._topics.deadletter,
                letter.model_dump_json().encode(),
                key=None,
                headers=[(k, v.encode()) for k, v in letter.headers().items()],
            )
        except BrokerUnavailableError:
            # The dead letter is not stored: do not claim anything to the sender; it retries.
            log.warning("broker unavailable: rejected message not dead-lettered, no ACK sent")
            return None
        code: AckCode = "AR" if error.reject else "AE"
        log.info(
            "%s control_id=%s code=%d location=%s: %s",
            code,
            error.control_id,
            error.code,
            error.location or "-",
            error.reason,
        )
        return self._ack(msg, code, error)

    def _ack(self, msg: Message | None, code: AckCode, error: Hl7Error | None) -> bytes:
        sender = msg.sending_system if msg is not None else "unknown"
        MESSAGES.labels(sender, code).inc()
        return build_ack(
            msg,
            code,
            ack_control_id=uuid.uuid4().hex[:20],
            now=self._clock(),
            receiver=self._receiver,
            error=error,
        )
