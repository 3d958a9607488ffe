"""MLLP clients: `MllpClient` (one connection, one ACK per message) and `OutboundMllp`.

`OutboundMllp` delivers messages to an EHR endpoint the way interface engines expect:
reconnect on a dropped connection, exponential backoff, and ACK reconciliation (an ACK
counts only when its MSA-2 names the control id we sent; a late ACK of an earlier,
timed-out attempt is skipped). AA/CA is delivered; AE/CE is a final rejection (the
content is wrong, resending cannot help); AR/CR, timeouts and connection failures are
retried until ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from connectors.errors import FramingError
from connectors.framing import frame, split_frames
from kernel.errors import Hl7Error
from kernel.hl7v2.parser import parse_message
from kernel.settings import OutboundSettings

log = logging.getLogger(__name__)
_OUTBOUND = OutboundSettings()  # the defaults of the settings, written there once


@dataclass(frozen=True, slots=True)
class AckResult:
    """What came back for one sent message."""

    code: str | None  # MSA-1, or None when the connection closed without an ACK
    raw: bytes


def ack_code(ack: bytes) -> str | None:
    """MSA-1 of an ACK, or None if the bytes are not a readable ACK."""
    return ack_of(ack)[0]


class MllpClient:
    """One MLLP connection."""

    def __init__(
        self, host: str, port: int, *, timeout_s: float = 30.0, ssl: ssl_module.SSLContext | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl
        self._timeout = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buffer = b""

    async def __aenter__(self) -> MllpClient:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def send(self, payload: bytes, *, timeout_s: float | None = None) -> AckResult:
        """Send one message and wait for its ACK (code None if the server hung up).

        Raises:
            TimeoutError: no ACK within the timeout.
        """
        if self._reader is None or self._writer is None:
            raise RuntimeError("MllpClient is used outside 'async with'")
        self._writer.write(frame(payload))
        await self._writer.drain()
        async with asyncio.timeout(self._timeout if timeout_s is None else timeout_s):
            while True:
                try:
                    frames, self._buffer = split_frames(self._buffer)
                except FramingError:
                    return AckResult(None, self._buffer)
                if frames:
                    first, rest = frames[0], frames[1:]
                    self._buffer = b"".join(frame(f) for f in rest) + self._buffer
                    return AckResult(ack_code(first), first)
                data = await self._reader.read(65536)
                if not data:
                    return AckResult(None, b"")
                self._buffer += data


def ack_of(ack: bytes) -> tuple[str | None, str | None]:
    """(MSA-1 code, MSA-2 control id) of an ACK, or (None, None) if unreadable."""
    try:
        msa = parse_message(ack.decode("utf-8", "replace")).first("MSA")
    except Hl7Error:
        return None, None
    return (msa.value(1), msa.value(2)) if msa is not None else (None, None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """The result of delivering one message."""

    outcome: Literal["delivered", "rejected", "failed"]
    code: str  # last ACK code, or "timeout" / "connection"
    attempts: int
    control_id: str


class OutboundMllp:
    """Deliver HL7 messages to one MLLP endpoint, one at a time, reconnecting as needed."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        ack_timeout_s: float = _OUTBOUND.ack_timeout_s,
        connect_timeout_s: float = 10.0,
        max_attempts: int = _OUTBOUND.max_attempts,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._host, self._port, self._ssl = host, port, ssl
        self._ack_timeout = ack_timeout_s
        self._connect_timeout = connect_timeout_s
        self._max_attempts = max_attempts
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._sleep = sleep
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buffer = b""
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the connection."""
        writer, self._writer, self._reader = self._writer, None, None
        self._buffer = b""
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _connect(self) -> None:
        if self._writer is None:
            async with asyncio.timeout(self._connect_timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl
                )

    async def deliver(self, payload: bytes) -> Delivery:
        """Send one message until it is acknowledged, finally rejected or out of attempts."""
        control_id = parse_message(payload.decode("utf-8", "replace")).control_id
        async with self._lock:  # one message in flight keeps the order of delivery
            code = "connection"
            for attempt in range(1, self._max_attempts + 1):
                try:
                    await self._connect()
                    code = await self._exchange(payload, control_id)
                except (OSError, TimeoutError, FramingError) as exc:
                    code = "timeout" if isinstance(exc, TimeoutError) else "connection"
                    await self.close()
                else:
                    if code in ("AA", "CA"):
                        return Delivery("delivered", code, attempt, control_id)
                    if code in ("AE", "CE"):
                        return Delivery("rejected", code, attempt, control_id)
                log.warning("outbound MLLP control_id=%s attempt %d got %s", control_id, attempt, code)
                if attempt < self._max_attempts:
                    await self._sleep(min(self._backoff_max, self._backoff_initial * 2 ** (attempt - 1)))
            return Delivery("failed", code, self._max_attempts, control_id)

    async def _exchange(self, payload: bytes, control_id: str) -> str:
        if self._reader is None or self._writer is None:
            raise ConnectionResetError("not connected")
        self._writer.write(frame(payload))
        await self._writer.drain()
        async with asyncio.timeout(self._ack_timeout):
            while True:
                frames, self._buffer = split_frames(self._buffer)
                for i, f in enumerate(frames):
                    code, acked = ack_of(f)
                    if acked == control_id and code is not None:
                        self._buffer = b"".join(frame(x) for x in frames[i + 1 :]) + self._buffer
                        return code
                    log.info("outbound MLLP: skipped an ACK that is not for control_id=%s", control_id)
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionResetError("peer closed the connection")
                self._buffer += data
