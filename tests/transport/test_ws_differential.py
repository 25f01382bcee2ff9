"""Courier's WebSocket frame reader against a well-kept implementation: the `websockets`
library's sans-I/O protocol, in the server role, with the same message size limit.

Hypothesis writes client byte streams (fragmented messages, control frames between the
fragments, every length encoding, masks and unmasked frames, reserved bits, unknown opcodes,
text that is not UTF-8, close frames good and bad, messages over the limit) and cuts them at
arbitrary byte boundaries. Both sides read the same bytes; the test compares the messages they
take out (opcode and payload), how the stream ended (the client's close, or the code the
server fails the connection with), and that neither depends on where TCP cut the bytes.

Courier's side is `FrameReader` plus what the lean front does with what it returns: a close
frame is read with `parse_close` and ends the connection; a text message that is not UTF-8
fails it with 1007. The websockets side is `ServerProtocol` plus what websockets' own
connection does with a text message it hands to the application: it decodes it, and fails
the connection with 1007 when that fails (websockets.asyncio.connection, `recv`).

Where the two differ, RFC 6455 allows Courier's answer, or requires it; each case is one rule
below (`_RULES`), with the reason, and has an explicit test further down.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame as WsFrame
from websockets.protocol import State
from websockets.server import ServerProtocol

from courier.config import Settings
from courier.transport.ws_frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    parse_close,
)

MAX = Settings().frame_max_bytes  # the server's default message limit (64 KiB)
CONTROL = (CLOSE, PING, PONG)
DATA = (TEXT, BINARY)
KNOWN = (CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG)

Message = tuple[int, bytes]


# ---- frames, as a client (good or bad) writes them ------------------------------------------
@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0  # the three reserved bits, 0..7
    mask: bytes | None = b"\x00\x00\x00\x00"  # None: unmasked
    length: str = "minimal"  # "minimal", "16" or "64": the length field's encoding
    declared: int | None = None  # a header announcing this many bytes, and no payload after it

    @property
    def size(self) -> int:
        return len(self.payload) if self.declared is None else self.declared

    def wire(self) -> bytes:
        n = self.size
        first = (0x80 if self.fin else 0) | self.rsv << 4 | self.opcode
        masked = 0x80 if self.mask is not None else 0
        if self.length == "64" or n > 0xFFFF:
            head = struct.pack("!BBQ", first, masked | 127, n)
        elif self.length == "16" or n > 125:
            head = struct.pack("!BBH", first, masked | 126, n)
        else:
            head = bytes((first, masked | n))
        if self.declared is not None:
            return head + (self.mask or b"")
        if self.mask is None:
            return head + self.payload
        key = self.mask
        body = bytes(b ^ key[i % 4] for i, b in enumerate(self.payload[:64]))
        if len(self.payload) > 64:  # long payloads: XOR as integers, as fast as it gets here
            rest = self.payload[64:]
            stretched = (key * (len(self.payload) // 4 + 1))[64 : len(self.payload)]
            body += (int.from_bytes(rest, "big") ^ int.from_bytes(stretched, "big")).to_bytes(
                len(rest), "big"
            )
        return head + key + body


@dataclass
class Outcome:
    """What a server made of a stream: the messages, and how it ended."""

    messages: list[Message] = field(default_factory=list)
    close: tuple[int, str] | None = None  # the client closed cleanly with this code and reason
    fail: int | None = None  # the server failed the connection with this close code
    at: int | None = field(default=None, compare=False)  # the frame at which it ended
    rule: str | None = field(default=None, compare=False)  # which rule below made it


# ---- Courier's side -------------------------------------------------------------------------
def courier(chunks: list[bytes], max_size: int = MAX) -> Outcome:
    """The lean front's reading: FrameReader, then `parse_close` for a close frame. Once the
    stream has ended (a close, a violation), the reader must read nothing more."""
    reader = FrameReader(max_size)
    out = Outcome()
    for i, chunk in enumerate(chunks):
        try:
            messages = reader.feed(chunk)
            failure = None
        except FrameError as exc:
            messages, failure = exc.messages, exc
        for j, (opcode, payload) in enumerate(messages):
            if opcode == CLOSE:
                assert j == len(messages) - 1 and failure is None, "read past a close frame"
                try:
                    out.close = parse_close(payload)
                except FrameError as exc:
                    out.fail = exc.code
                out.at = i
                break
            out.messages.append((opcode, payload))
        else:
            if failure is not None:
                out.fail, out.at = failure.code, i
        if out.at is not None:
            assert all(reader.feed(rest) == [] for rest in chunks[i + 1 :]), "read past the end"
            return out
    return out


# ---- websockets' side -----------------------------------------------------------------------
def websockets(chunks: list[bytes], max_size: int = MAX) -> Outcome:
    """websockets' server protocol, and its connection's UTF-8 check of text messages."""
    protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
    out = Outcome()
    fragments: list[WsFrame] = []
    for i, chunk in enumerate(chunks):
        protocol.receive_data(chunk)
        for frame in protocol.events_received():
            assert isinstance(frame, WsFrame)
            opcode, data = int(frame.opcode), bytes(frame.data)
            if opcode == CLOSE:
                assert protocol.close_rcvd is not None
                out.close, out.at = (protocol.close_rcvd.code, protocol.close_rcvd.reason), i
                return out
            if opcode in CONTROL:
                out.messages.append((opcode, data))
                continue
            fragments.append(frame)
            if not frame.fin:
                continue
            first = int(fragments[0].opcode)
            payload = b"".join(bytes(f.data) for f in fragments)
            fragments = []
            if first == TEXT:
                try:
                    payload.decode()
                except UnicodeDecodeError:
                    out.fail, out.at = 1007, i
                    return out
            out.messages.append((first, payload))
        if protocol.parser_exc is not None:
            # A close frame websockets refused: it was read, then failed on.
            assert protocol.close_sent is not None
            out.close = None
            out.fail, out.at = protocol.close_sent.code, i
            return out
    return out


# ---- where RFC 6455 lets Courier answer differently, and why --------------------------------
def _in_message(frames: list[Frame], upto: int) -> int | None:
    """The size so far of the fragmented message open before frame `upto` (None: none)."""
    size: int | None = None
    for frame in frames[:upto]:
        if frame.opcode in DATA and not frame.fin:
            size = frame.size
        elif frame.opcode == CONTINUATION and size is not None:
            size = None if frame.fin else size + frame.size
    return size


def _malformed(frame: Frame, open_size: int | None) -> bool:
    """The frame's header alone breaks RFC 6455 5 (whatever the size limit)."""
    if frame.rsv or frame.mask is None or frame.opcode not in KNOWN:
        return True
    if frame.opcode in CONTROL:
        return not frame.fin or frame.size > 125
    if frame.opcode == CONTINUATION:
        return open_size is None
    return open_size is not None


def _check_order(frames: list[Frame], ws: Outcome, max_size: int) -> Outcome | None:
    """A frame that is malformed AND over the limit: websockets reads the length and checks
    the limit before the reserved bits, the control-frame rules and the fragment order, so it
    closes 1009; Courier checks the header's rules first and closes 1002. RFC 6455 orders none
    of these checks: either code fails the connection, as 5.2, 5.4, 5.5 and 7.4.1 require.
    Courier's is the more precise: the frame is malformed whatever limit the server has."""
    if ws.fail != 1009 or ws.at is None:
        return None
    frame = frames[ws.at]
    if _malformed(frame, _in_message(frames, ws.at)):
        return replace(ws, fail=1002)
    return None


def _control_inside_a_message(frames: list[Frame], ws: Outcome, max_size: int) -> Outcome | None:
    """A well-formed control frame between the fragments of a message. websockets refuses a
    close there (1002, "incomplete fragmented message") and measures a ping, pong or close
    against what is left of the message's size budget (1009). RFC 6455 5.4: control frames
    MAY be injected in the middle of a fragmented message; 5.5: they are not part of it, and
    1.4 and 5.5.1 let a close end the connection at any time, the unfinished message with it.
    Courier answers the ping, and takes the close as a close."""
    if ws.fail not in (1002, 1009) or ws.at is None:
        return None
    frame = frames[ws.at]
    open_size = _in_message(frames, ws.at)
    if open_size is None or frame.opcode not in CONTROL or _malformed(frame, open_size):
        return None
    if frame.opcode == CLOSE:
        try:
            return Outcome(ws.messages, close=parse_close(frame.payload), at=ws.at)
        except FrameError as exc:
            if ws.fail == 1002 and exc.code == 1002:
                return None  # the same answer for the same reason
            return Outcome(ws.messages, fail=exc.code, at=ws.at)
    rest = expected(frames[: ws.at] + frames[ws.at + 1 :], max_size)
    before = len(ws.messages)
    return replace(
        rest,
        messages=[*rest.messages[:before], (frame.opcode, frame.payload), *rest.messages[before:]],
        at=None,
    )


def _close_code_before_reason(frames: list[Frame], ws: Outcome, max_size: int) -> Outcome | None:
    """A close frame with both a code no endpoint may send and a reason that is not UTF-8:
    websockets decodes the reason first (1007), Courier checks the code first (1002). RFC 6455
    7.4 and 8.1 make each a reason to fail; neither is ranked above the other."""
    if ws.fail != 1007 or ws.at is None:
        return None
    frame = frames[ws.at]
    if frame.opcode != CLOSE or frame.rsv or frame.mask is None:
        return None
    try:
        parse_close(frame.payload)
    except FrameError as exc:
        if exc.code == 1002:
            return replace(ws, fail=1002)
    return None


_RULES: list[Callable[[list[Frame], Outcome, int], Outcome | None]] = [
    _check_order,
    _control_inside_a_message,
    _close_code_before_reason,
]


def expected(frames: list[Frame], max_size: int = MAX) -> Outcome:
    """websockets' outcome, frame by frame, with the rules above applied where they apply."""
    ws = websockets([f.wire() for f in frames], max_size)
    for rule in _RULES:
        ruled = rule(frames, ws, max_size)
        if ruled is not None:
            return replace(ruled, rule=rule.__name__.strip("_"))
    return ws


# ---- the streams ----------------------------------------------------------------------------
BAD_UTF8 = [
    b"\xff",  # never in UTF-8
    b"\x80",  # a continuation byte alone
    b"\xc0\xaf",  # an overlong "/"
    b"\xe0\x80\xaf",  # an overlong "/" in three bytes
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xe2\x82",  # a sequence cut short ...
    b"\xf0\x9f\x98",  # ... of four bytes
    b"\xce",  # ... at the very end
]
BOUNDARIES = [0, 1, 125, 126, 127, 65535, 65536, 65537]


def _sized(pattern: bytes, n: int) -> bytes:
    return (pattern * (n // max(len(pattern), 1) + 1))[:n] if pattern else b"\x00" * n


texts = st.text(max_size=40).map(str.encode)
bad_texts = st.builds(
    lambda a, bad, b: a + bad + b, texts, st.sampled_from(BAD_UTF8), texts | st.just(b"")
)
long_payloads = st.builds(
    _sized,
    st.sampled_from([b"x", b"{}", "é".encode(), "€".encode(), "😀".encode(), b"\xff\x00"]),
    st.sampled_from(BOUNDARIES) | st.integers(0, MAX + 2),
)
good_long_texts = st.builds(
    lambda pattern, n: _sized(pattern, n).decode(errors="ignore").encode(),
    st.sampled_from([b"x", "é".encode(), "€".encode(), "😀".encode()]),
    st.sampled_from(BOUNDARIES) | st.integers(0, MAX + 2),
)
masks = st.binary(min_size=4, max_size=4) | st.just(b"\x00\x00\x00\x00")


@st.composite
def frames_of(draw: st.DrawFn, opcode: int, payload: bytes, fin: bool) -> Frame:
    """One frame, mostly well formed, sometimes broken in one of the ways a client can."""
    n = len(payload)
    length = draw(
        st.sampled_from(
            ["minimal"] * 6 + (["16"] if n <= 0xFFFF else []) + ["64"]  # both accept non-minimal
        )
    )
    frame = Frame(opcode, payload, fin, mask=draw(masks), length=length)
    broken = draw(st.sampled_from(["none"] * 96 + ["rsv", "unmasked", "opcode", "fin"]))
    if broken == "rsv":
        frame = replace(frame, rsv=draw(st.integers(1, 7)))
    elif broken == "unmasked":
        frame = replace(frame, mask=None)
    elif broken == "opcode":
        frame = replace(frame, opcode=draw(st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xF])))
    elif broken == "fin" and opcode in CONTROL:
        frame = replace(frame, fin=False)
    return frame


PEER_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
BAD_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]


@st.composite
def close_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b""
    if kind == 1:
        return draw(st.binary(min_size=1, max_size=1))
    codes = st.sampled_from(PEER_CODES) | st.integers(3000, 4999)
    if kind == 2:
        codes = st.sampled_from(BAD_CODES) | st.integers(0, 65535)
    reason = draw(st.text(max_size=30).map(str.encode))
    if kind == 3:
        reason = draw(st.sampled_from(BAD_UTF8))
    return struct.pack("!H", draw(codes)) + reason


@st.composite
def controls(draw: st.DrawFn) -> Frame:
    opcode = draw(st.sampled_from([PING, PONG, PING, PONG, CLOSE]))
    if opcode == CLOSE:
        payload = draw(close_payloads())
    elif draw(st.integers(0, 19)) == 0:
        payload = draw(st.sampled_from([b"x" * 126, b"x" * 300]))  # too long for control
    else:
        payload = draw(st.binary(max_size=125) | st.just(b"p" * 125))
    return draw(frames_of(opcode, payload, True))


@st.composite
def messages(draw: st.DrawFn, max_size: int) -> list[Frame]:
    """A data message in 1..4 fragments, with control frames between them at times."""
    opcode = draw(st.sampled_from([TEXT, TEXT, BINARY]))
    if opcode == BINARY:
        payload = draw(st.binary(max_size=200) | long_payloads)
    elif draw(st.integers(0, 4)) == 0:  # text that is not UTF-8
        payload = draw(bad_texts | long_payloads | st.binary(min_size=1, max_size=50))
    else:
        payload = draw(texts | good_long_texts)
    if draw(st.integers(0, 9)) == 0:  # near the size limit, where control frames get squeezed
        payload = _sized(payload or b"y", max_size - draw(st.integers(-2, 130)))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    out: list[Frame] = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out.append(draw(frames_of(opcode if i == 0 else CONTINUATION, piece, last)))
        if not last and draw(st.integers(0, 3)) == 0:
            out.append(draw(controls()))
    return out


@st.composite
def streams(draw: st.DrawFn, max_size: int = MAX) -> list[Frame]:
    frames: list[Frame] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["message"] * 12 + ["control"] * 4 + ["stray", "fragment"]))
        if kind == "message":
            frames += draw(messages(max_size))
        elif kind == "control":
            frames.append(draw(controls()))
        elif kind == "stray":  # a continuation of nothing
            frames.append(draw(frames_of(CONTINUATION, draw(texts), draw(st.booleans()))))
        else:  # a message left open; what follows must continue it
            frames.append(draw(frames_of(draw(st.sampled_from(DATA)), draw(texts), False)))
    if draw(st.integers(0, 9)) == 0:  # a last header announcing far too much
        opcode = draw(st.sampled_from([TEXT, BINARY, CONTINUATION, PING, CLOSE, 0x3]))
        big = draw(st.sampled_from([max_size + 1, 1 << 32, 1 << 62, (1 << 64) - 1]))
        frames.append(
            Frame(opcode, declared=big, fin=draw(st.booleans()), rsv=draw(st.sampled_from([0, 4])))
        )
    return frames


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(data[pos : pos + size])
        pos += size
    chunks.append(data[pos:])
    return [c for c in chunks if c]


chunk_sizes = st.lists(st.integers(1, 16) | st.integers(1, 70_000), max_size=12)


# ---- the differential -----------------------------------------------------------------------
def check(frames: list[Frame], sizes: list[int], max_size: int = MAX) -> None:
    wires = [f.wire() for f in frames]
    want = expected(frames, max_size)
    event(f"fail {want.fail}" if want.fail else "closed" if want.close else "open")
    event(f"rule {want.rule}")
    event(f"{len(want.messages)} messages" if len(want.messages) < 3 else "3+ messages")
    per_frame = courier(wires, max_size)
    assert per_frame == want, (per_frame, want)
    # Neither side depends on where TCP cut the bytes.
    stream = b"".join(wires)
    assert courier(cut(stream, sizes), max_size) == per_frame
    assert websockets(cut(stream, sizes), max_size) == websockets(wires, max_size)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), chunk_sizes)
@example([Frame(TEXT, b'{"type":"ping"}'), Frame(PING, b"x", rsv=1)], [10_000])
@example([Frame(TEXT, b"x" * MAX), Frame(CLOSE, b"\x03\xe8")], [1])
def test_courier_reads_client_streams_as_websockets_does(
    frames: list[Frame], sizes: list[int]
) -> None:
    check(frames, sizes)


@settings(max_examples=300, deadline=None)
@given(streams(max_size=300), chunk_sizes)
def test_the_same_under_a_small_limit(frames: list[Frame], sizes: list[int]) -> None:
    """A small limit makes messages and fragments near and over it common."""
    check(frames, sizes, max_size=300)


# ---- the rules, one explicit case each ------------------------------------------------------
def both(frames: list[Frame], max_size: int = MAX) -> tuple[Outcome, Outcome]:
    wires = [f.wire() for f in frames]
    return courier(wires, max_size), websockets(wires, max_size)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(Frame(TEXT, b"x" * (MAX + 1), rsv=4), id="reserved-bit"),
        pytest.param(Frame(PING, declared=MAX + 1), id="long-control"),
        pytest.param(Frame(CONTINUATION, b"x" * (MAX + 1)), id="continuation-of-nothing"),
        pytest.param(Frame(PING, declared=1 << 40, fin=False), id="fragmented-control"),
    ],
)
def test_a_malformed_frame_over_the_limit_is_a_protocol_error(frame: Frame) -> None:
    ours, theirs = both([frame])
    assert (ours.fail, theirs.fail) == (1002, 1009)
    assert ours == expected([frame])


def test_a_new_message_inside_a_fragmented_one_is_a_protocol_error_whatever_its_size() -> None:
    frames = [Frame(TEXT, b"a" * 100, fin=False), Frame(TEXT, b"b" * (MAX - 50))]
    ours, theirs = both(frames)
    assert (ours.fail, theirs.fail) == (1002, 1009)


def test_a_ping_between_fragments_does_not_count_against_the_message() -> None:
    frames = [
        Frame(TEXT, b"a" * (MAX - 10), fin=False),
        Frame(PING, b"p" * 100),
        Frame(CONTINUATION, b"b" * 10),
    ]
    ours, theirs = both(frames)
    assert theirs.fail == 1009
    assert ours == Outcome([(PING, b"p" * 100), (TEXT, b"a" * (MAX - 10) + b"b" * 10)])
    assert ours == expected(frames)


def test_a_close_between_fragments_closes() -> None:
    frames = [Frame(TEXT, b"half", fin=False), Frame(CLOSE, struct.pack("!H", 1001) + b"bye")]
    ours, theirs = both(frames)
    assert theirs.fail == 1002
    assert ours == Outcome([], close=(1001, "bye"))
    assert ours == expected(frames)


def test_a_close_with_a_bad_code_and_a_bad_reason_is_refused_for_the_code() -> None:
    frames = [Frame(CLOSE, struct.pack("!H", 999) + b"\xff")]
    ours, theirs = both(frames)
    assert (ours.fail, theirs.fail) == (1002, 1007)


# ---- what both do, said once more in plain cases --------------------------------------------
@pytest.mark.parametrize(
    ("frames", "fail"),
    [
        pytest.param([Frame(TEXT, b"\xff")], 1007, id="not-utf8"),
        pytest.param(
            [Frame(TEXT, "é".encode()[:1], fin=False), Frame(CONTINUATION, b"x")],
            1007,
            id="a-character-cut-then-broken",
        ),
        pytest.param([Frame(TEXT, b'{"type":"ping","x":"\xed\xa0\x80"}')], 1007, id="surrogate"),
        pytest.param([Frame(TEXT, b"x" * (MAX + 1))], 1009, id="one-byte-over"),
        pytest.param(
            [Frame(TEXT, b"x" * (MAX // 2), fin=False), Frame(CONTINUATION, b"x" * (MAX // 2 + 1))],
            1009,
            id="fragments-one-byte-over",
        ),
        pytest.param([Frame(CLOSE, b"\x03")], 1002, id="one-byte-close"),
        pytest.param([Frame(CLOSE, struct.pack("!H", 1000) + b"\xc0\xaf")], 1007, id="reason"),
        pytest.param([Frame(PING, b"x" * 126)], 1002, id="long-ping"),
    ],
)
def test_failures_agree(frames: list[Frame], fail: int) -> None:
    ours, theirs = both(frames)
    assert ours.fail == theirs.fail == fail
    assert ours == theirs


def test_a_character_split_across_fragments_is_one_valid_text() -> None:
    text = "zürich 😀".encode()
    frames = [Frame(TEXT, text[:2], fin=False), Frame(CONTINUATION, text[2:9], fin=False)]
    frames.append(Frame(CONTINUATION, text[9:]))
    ours, theirs = both(frames)
    assert ours == theirs == Outcome([(TEXT, text)])


def test_messages_before_a_violation_in_the_same_read_are_kept() -> None:
    stream = Frame(TEXT, b"first").wire() + Frame(PING, b"p", rsv=2).wire()
    assert courier([stream]) == Outcome([(TEXT, b"first")], fail=1002)


def test_bytes_after_a_close_are_not_read() -> None:
    stream = Frame(CLOSE, struct.pack("!H", 1000)).wire() + b"\x00" * 20 + os.urandom(20)
    assert courier([stream]) == Outcome([], close=(1000, ""))
