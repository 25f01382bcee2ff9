"""Server-side WebSocket framing (RFC 6455 5.2), so that all frames queued for a connection in
one loop tick leave in a single write. Servers never mask; Courier never compresses."""

from __future__ import annotations

import struct

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_TEXT_FIN = 0x81


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((_TEXT_FIN, n)) + payload
    if n < 65536:
        return _LEN16.pack(_TEXT_FIN, 126, n) + payload
    return _LEN64.pack(_TEXT_FIN, 127, n) + payload


def text_frames(payloads: list[bytes]) -> bytes:
    return b"".join([text_frame(p) for p in payloads])
