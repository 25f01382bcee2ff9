"""WebSocket framing (RFC 6455 5): frames written by the server, and a strict reader of the
frames a client sends. Servers never mask; Courier never compresses, so no extension is
negotiated and every reserved bit must be zero.

Writing: all frames queued for a connection in one loop tick leave in a single write.
Reading: the reader reassembles fragmented messages, checks that text messages are UTF-8
(RFC 6455 8.1), answers nothing itself, and raises `FrameError` with the close code the
connection must end with. It reads nothing after a close frame or a violation (1.4, 7.1.7).
"""

from __future__ import annotations

import struct

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_TEXT_FIN = 0x81

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (TEXT, BINARY)
_CONTROL = (CLOSE, PING, PONG)

# Close codes (RFC 6455 7.4.1).
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013
# Close codes a peer may send (RFC 6455 7.4); 1005, 1006 and 1015 never appear on the wire.
_PEER_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def text_frame(payload: bytes) -> bytes:
    return _frame(_TEXT_FIN, payload)


def text_frames(payloads: list[bytes]) -> bytes:
    return b"".join([_frame(_TEXT_FIN, p) for p in payloads])


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return _frame(0x80 | opcode, payload[:125])


def close_frame(code: int, reason: str = "") -> bytes:
    return control_frame(CLOSE, struct.pack("!H", code) + reason.encode()[:123])


def _frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _LEN16.pack(first, 126, n) + payload
    return _LEN64.pack(first, 127, n) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a close frame (1005 when it has no code)."""
    if not payload:
        return 1005, ""
    if len(payload) < 2:
        raise FrameError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code not in _PEER_CODES and not 3000 <= code <= 4999:
        raise FrameError(PROTOCOL_ERROR, "invalid close code")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None


class FrameError(Exception):
    """A violation, with the close code; `messages` are the whole messages that came before
    it in the same read, which the connection still handles before it fails."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.messages: list[tuple[int, bytes]] = []


class FrameReader:
    """Client frames in, whole messages out: (opcode, payload) with the mask removed.

    Control frames come out as they arrive, also between the fragments of a message; they
    do not count against the message's size. A data message longer than `max_size` is
    refused as soon as its header says so. A close frame is the last thing read.
    """

    __slots__ = ("_buf", "_done", "_fragments", "_need", "_opcode", "_size", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()  # the unparsed tail of what arrived
        self._need = 0  # bytes the tail must reach before parsing can make progress
        self._fragments: list[bytes] | None = None
        self._opcode = 0
        self._size = 0
        self._done = False  # after a close frame or a violation, the rest is discarded

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._done:
            return []
        if self._buf:
            # A frame arriving in many small pieces is appended, not reparsed per piece.
            self._buf += data
            if len(self._buf) < self._need:
                return []
            data, self._buf = bytes(self._buf), bytearray()
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(data)
        need = 0
        try:
            while pos < end:
                if end - pos < 2:
                    need = 2
                    break
                b0, b1 = data[pos], data[pos + 1]
                if b0 & 0x70:
                    raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
                if not b1 & 0x80:
                    raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
                opcode, fin, n, head = b0 & 0x0F, b0 & 0x80, b1 & 0x7F, 6
                if n == 126:
                    if end - pos < 4:
                        need = 4
                        break
                    n, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 8
                elif n == 127:
                    if end - pos < 10:
                        need = 10
                        break
                    n, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 14
                self._check(opcode, fin, n)
                if end - pos < head + n:
                    need = head + n
                    break
                mask = data[pos + head - 4 : pos + head]
                payload = unmask(data[pos + head : pos + head + n], mask)
                pos += head + n
                message = self._assemble(opcode, fin, payload)
                if message is not None:
                    out.append(message)
                    if opcode == CLOSE:  # RFC 6455 1.4: what follows a close is discarded
                        self._done = True
                        return out
        except FrameError as exc:
            self._done = True  # 7.1.7: nothing more is read from a failed connection
            exc.messages = out
            raise
        if pos < end:
            self._buf = bytearray(data[pos:])
            self._need = need
        return out

    def _check(self, opcode: int, fin: int, n: int) -> None:
        if opcode in _CONTROL:
            if not fin or n > 125:
                raise FrameError(PROTOCOL_ERROR, "control frames must be whole and short")
            return
        if opcode == CONTINUATION:
            if self._fragments is None:
                raise FrameError(PROTOCOL_ERROR, "continuation without a message")
            size = self._size + n
        elif opcode in _DATA:
            if self._fragments is not None:
                raise FrameError(PROTOCOL_ERROR, "a new message inside a fragmented one")
            size = n
        else:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if size > self.max_size:
            raise FrameError(MESSAGE_TOO_BIG, "message too big")

    def _assemble(self, opcode: int, fin: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode in _CONTROL:
            return opcode, payload
        if opcode != CONTINUATION:
            if fin:
                # RFC 6455 8.1; JSON text is mostly ASCII, which needs no decoding to check.
                if opcode == TEXT and not payload.isascii():
                    _check_utf8(payload)
                return opcode, payload
            self._opcode, self._fragments, self._size = opcode, [payload], len(payload)
            return None
        assert self._fragments is not None
        self._fragments.append(payload)
        self._size += len(payload)
        if not fin:
            return None
        whole = b"".join(self._fragments)
        self._fragments, self._size = None, 0
        if self._opcode == TEXT and not whole.isascii():
            _check_utf8(whole)  # a character may be split across fragments: check the whole
        return self._opcode, whole


def _check_utf8(payload: bytes) -> None:
    try:
        payload.decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "text message is not UTF-8") from None
