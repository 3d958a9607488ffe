"""A minimal MLLP client: send messages on one connection, read one ACK per message.

Used by `clinstream demo` and the tests; the production outbound client (reconnect,
backoff, ACK reconciliation) builds on it.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from dataclasses import dataclass

from connectors.errors import FramingError
from connectors.framing import frame, split_frames
from stream.hl7v2 import parse_message


@dataclass(frozen=True, slots=True)
class AckResult:
    """What came back for one sent message."""

    code: str | None  # MSA-1, or None when the connection closed without an ACK
    raw: bytes


def ack_code(ack: bytes) -> str | None:
    """MSA-1 of an ACK, or None if the bytes are not a readable ACK."""
    try:
        msa = parse_message(ack.decode("utf-8", "replace")).first("MSA")
    except ValueError:
        return None
    return msa.value(1) if msa is not None else None


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

    async def send(self, payload: bytes) -> AckResult:
        """Send one message and wait for its ACK (code None if the server hung up)."""
        if self._reader is None or self._writer is None:
            raise RuntimeError("MllpClient is used outside 'async with'")
        self._writer.write(frame(payload))
        await self._writer.drain()
        async with asyncio.timeout(self._timeout):
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
