"""MLLP framing: ``0x0B payload 0x1C 0x0D``. Pure bytes in, frames out.

The reader keeps a buffer and calls `split_frames` on it; anything after the last
complete frame stays in the buffer until more bytes arrive.
"""

from __future__ import annotations

from connectors.errors import FrameTooLargeError, FramingError

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
_END = END_BLOCK + CARRIAGE_RETURN


def frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP start and end blocks."""
    return START_BLOCK + payload + _END


def split_frames(buffer: bytes, *, max_size: int | None = None) -> tuple[list[bytes], bytes]:
    """Split a receive buffer into complete frame payloads and the unconsumed rest.

    Whitespace between frames (some senders add CR/LF) is skipped.

    Raises:
        FramingError: bytes other than whitespace before a start block.
        FrameTooLargeError: an incomplete frame longer than ``max_size``.
    """
    frames: list[bytes] = []
    pos = 0
    n = len(buffer)
    while pos < n:
        start = buffer.find(START_BLOCK, pos)
        if start == -1:
            junk = buffer[pos:]
            if junk.strip():
                raise FramingError("data outside an MLLP frame")
            return frames, b""
        if buffer[pos:start].strip():
            raise FramingError("data outside an MLLP frame")
        end = buffer.find(_END, start + 1)
        if end == -1:
            rest = buffer[start:]
            if max_size is not None and len(rest) - 1 > max_size:
                raise FrameTooLargeError(f"frame exceeds {max_size} bytes")
            return frames, rest
        payload = buffer[start + 1 : end]
        if max_size is not None and len(payload) > max_size:
            raise FrameTooLargeError(f"frame exceeds {max_size} bytes")
        frames.append(payload)
        pos = end + 2
    return frames, b""
