"""`python -m bench.frame_reader`: what reading one client frame costs on the lean front, and
what the UTF-8 check of text messages (RFC 6455 8.1) adds to it. One JSON line per payload.

Each line: `feed_ns`, one single-frame message through `FrameReader.feed`; `check_ns`, the
check alone as the reader does it (`isascii`, then `decode` only for text that is not ASCII);
`decode_ns`, a plain `bytes.decode` for comparison; `share`, check_ns / feed_ns; and
`msgspec_ns`, decoding the same frame into Courier's client frame types, which every text
message costs next anyway.
"""

from __future__ import annotations

import json
import os
import sys
import timeit
from collections.abc import Callable
from functools import partial

import msgspec

from courier.transport import wire
from courier.transport.ws_frames import FrameReader, text_frame, unmask


def _send(body: str) -> bytes:
    frame = {"type": "send", "to": "bob", "body": body, "client_id": "c-0001"}
    return msgspec.json.encode(frame)


PAYLOADS = {
    "send_ascii_100": _send("x" * 100),
    "send_cyrillic_100": _send("ж" * 100),
    "send_emoji_50": _send("😀" * 50),
    "send_ascii_4096": _send("x" * 4096),
    "send_cyrillic_4096": _send("ж" * 4096),
}


def _masked(payload: bytes) -> bytes:
    """The client's frame: the server's text frame with the mask bit and a key added."""
    head = bytearray(text_frame(payload)[: -len(payload)])
    head[1] |= 0x80
    key = os.urandom(4)
    return bytes(head) + key + unmask(payload, key)  # masking is its own inverse


def _ns(fn: Callable[[], object], number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return round(best / number * 1e9, 1)


def _check(payload: bytes) -> None:
    if not payload.isascii():
        payload.decode()


def main() -> None:
    reader = FrameReader(1 << 20)
    for name, payload in PAYLOADS.items():
        frame = _masked(payload)
        assert reader.feed(frame) == [(1, payload)]
        number = 20_000 if len(payload) < 1000 else 5_000
        feed_ns = _ns(partial(reader.feed, frame), number)
        check_ns = _ns(partial(_check, payload), number)
        line = {
            "bench": "frame_reader",
            "payload": name,
            "bytes": len(payload),
            "feed_ns": feed_ns,
            "check_ns": check_ns,
            "decode_ns": _ns(payload.decode, number),
            "share": round(check_ns / feed_ns, 3),
            "msgspec_ns": _ns(partial(wire.frame_decoder.decode, payload), number),
        }
        sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
