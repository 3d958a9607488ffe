import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.errors import FrameTooLargeError, FramingError
from connectors.framing import frame, split_frames

payloads = st.binary(max_size=2000).filter(lambda b: b"\x1c\x0d" not in b and b"\x0b" not in b)


@given(payloads)
def test_frame_round_trip(payload):
    assert split_frames(frame(payload)) == ([payload], b"")


@given(st.lists(payloads, max_size=5), st.integers(min_value=1, max_value=50))
def test_frames_split_at_any_chunk_boundary(messages, chunk):
    stream = b"".join(frame(m) for m in messages)
    got, buffer = [], b""
    for i in range(0, len(stream), chunk):
        buffer += stream[i : i + chunk]
        frames, buffer = split_frames(buffer)
        got.extend(frames)
    assert got == messages
    assert buffer == b""


@given(st.binary(max_size=500))
def test_arbitrary_bytes_give_frames_or_framing_error(data):
    try:
        frames, rest = split_frames(data, max_size=100)
    except FramingError:
        return
    assert all(len(f) <= 100 for f in frames)
    assert rest == b"" or rest.startswith(b"\x0b")


def test_partial_frame_is_kept():
    frames, rest = split_frames(b"\x0bMSH|^~\\&|A")
    assert frames == []
    assert rest == b"\x0bMSH|^~\\&|A"


def test_whitespace_between_frames_is_skipped():
    frames, rest = split_frames(frame(b"one") + b"\r\n" + frame(b"two"))
    assert frames == [b"one", b"two"]
    assert rest == b""


def test_data_outside_frame_is_an_error():
    with pytest.raises(FramingError):
        split_frames(b"MSH|^~\\&|no start block\x1c\x0d")


def test_oversized_incomplete_frame_is_refused():
    with pytest.raises(FrameTooLargeError):
        split_frames(b"\x0b" + b"x" * 200, max_size=100)


async def test_frames_read_from_a_stream_reader():
    reader = asyncio.StreamReader()
    reader.feed_data(frame(b"a") + frame(b"b")[:3])
    reader.feed_data(frame(b"b")[3:])
    reader.feed_eof()
    buffer, got = b"", []
    while chunk := await reader.read(4):
        buffer += chunk
        frames, buffer = split_frames(buffer)
        got.extend(frames)
    assert got == [b"a", b"b"]
