"""The WebSocket frame reader: any split of a valid client stream gives back the messages."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from courier.transport.ws_frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    close_frame,
    parse_close,
    text_frame,
    unmask,
)


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked frame, as a client must send it."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([(0x80 if fin else 0) | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([(0x80 if fin else 0) | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([(0x80 if fin else 0) | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# Long payloads repeat a short pattern: all three length encodings, without slow draws.
payloads = st.binary(max_size=300) | st.builds(
    lambda pattern, times: pattern * times,
    st.binary(min_size=1, max_size=4),
    st.integers(30, 20_000),
)
# Text is UTF-8 (its fragments may split a character); binary is anything.
texts = st.text(max_size=100).map(str.encode) | st.builds(
    lambda pattern, times: (pattern * times).encode(),
    st.text(min_size=1, max_size=3),
    st.integers(30, 7_000),
)
controls = st.tuples(st.sampled_from([PING, PONG]), st.binary(max_size=125))


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[int, bytes]], bytes]:
    """Messages (some fragmented, with control frames between the fragments) and their bytes."""
    expected: list[tuple[int, bytes]] = []
    wire = b""
    for _ in range(draw(st.integers(0, 6))):
        opcode = draw(st.sampled_from([TEXT, BINARY]))
        payload = draw(texts if opcode == TEXT else payloads)
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            wire += client_frame(opcode if i == 0 else CONTINUATION, piece, i == len(pieces) - 1)
            if i < len(pieces) - 1 and draw(st.booleans()):
                control = draw(controls)
                wire += client_frame(*control)
                expected.append(control)
        expected.append((opcode, payload))
    return expected, wire


@given(streams(), st.lists(st.integers(1, 70_000), max_size=8))
def test_any_split_of_a_valid_stream_gives_back_every_message(
    stream: tuple[list[tuple[int, bytes]], bytes], sizes: list[int]
) -> None:
    expected, wire = stream
    reader = FrameReader(max_size=1 << 20)
    got: list[tuple[int, bytes]] = []
    pos = 0
    for size in sizes:
        got += reader.feed(wire[pos : pos + size])
        pos += size
    got += reader.feed(wire[pos:])
    assert got == expected


@given(st.binary(max_size=200), st.binary(min_size=4, max_size=4))
def test_unmask_is_xor_with_the_repeated_key(payload: bytes, key: bytes) -> None:
    assert unmask(payload, key) == bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (bytes([0x81, 0x02]) + b"{}", 1002),  # unmasked
        (
            client_frame(TEXT, b"x")[:1].replace(b"\x81", b"\xc1") + client_frame(TEXT, b"x")[1:],
            1002,
        ),
        (client_frame(0x3, b""), 1002),
        (client_frame(CONTINUATION, b"x"), 1002),
        (client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"), 1002),
        (client_frame(PING, b"", fin=False), 1002),
        (client_frame(PING, b"x" * 126), 1002),
        (client_frame(TEXT, b"x" * 101), 1009),
        (client_frame(TEXT, b"x" * 60, fin=False) + client_frame(CONTINUATION, b"x" * 41), 1009),
    ],
)
def test_violations_raise_with_the_close_code(wire: bytes, code: int) -> None:
    with pytest.raises(FrameError) as raised:
        FrameReader(max_size=100).feed(wire)
    assert raised.value.code == code


def test_an_oversize_length_is_refused_from_the_header_alone() -> None:
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + b"mask"
    with pytest.raises(FrameError) as raised:
        FrameReader(max_size=100).feed(header)
    assert raised.value.code == 1009


def test_a_message_of_exactly_the_limit_is_accepted() -> None:
    assert FrameReader(max_size=100).feed(client_frame(TEXT, b"x" * 100)) == [(TEXT, b"x" * 100)]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (1005, "")),
        (struct.pack("!H", 1000) + b"bye", (1000, "bye")),
        (b"\x0f\xa0", (4000, "")),
    ],
)
def test_close_payloads_parse(payload: bytes, expected: tuple[int, str]) -> None:
    assert parse_close(payload) == expected


@pytest.mark.parametrize("payload", [b"\x03", struct.pack("!H", 1006), struct.pack("!H", 2999)])
def test_bad_close_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(FrameError):
        parse_close(payload)


@given(st.binary(max_size=70_000))
def test_server_frames_carry_their_length(payload: bytes) -> None:
    frame = text_frame(payload)
    assert frame[0] == 0x81 and frame.endswith(payload)
    n = frame[1]
    length = n if n < 126 else int.from_bytes(frame[2 : 4 if n == 126 else 10], "big")
    assert length == len(payload)


def test_a_close_frame_bounds_its_reason() -> None:
    frame = close_frame(1008, "x" * 300)
    assert frame[0] == 0x80 | CLOSE and frame[1] == 125


def test_a_large_frame_fed_one_byte_at_a_time_comes_out_whole() -> None:
    """Pieces are appended until the frame is complete, not reparsed per piece."""
    wire = client_frame(TEXT, b"y" * 70_000)
    reader = FrameReader(max_size=1 << 20)
    got = [m for i in range(len(wire)) for m in reader.feed(wire[i : i + 1])]
    assert got == [(TEXT, b"y" * 70_000)]
