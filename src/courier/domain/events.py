"""Timeline events exactly as they go on the wire (PROTOCOL.md, "Event").

An event is encoded once, when its seq is allocated, and the same bytes are stored, pushed to
every device and returned by pull and history reads.
"""

from __future__ import annotations

from typing import Literal

import msgspec

MESSAGE: Literal["message"] = "message"
RECEIPT: Literal["receipt"] = "receipt"
DELIVERED: Literal["delivered"] = "delivered"
READ: Literal["read"] = "read"


class MessageEvent(msgspec.Struct, kw_only=True):
    seq: int
    type: Literal["message"] = MESSAGE
    id: str
    from_: str = msgspec.field(name="from")
    to: str
    body: str
    ts: int
    client_id: str


class ReceiptEvent(msgspec.Struct, kw_only=True):
    seq: int
    type: Literal["receipt"] = RECEIPT
    status: Literal["delivered", "read"]
    peer: str
    up_to: int
    ts: int


class EventPeek(msgspec.Struct):
    """The few fields some readers need, decoded without touching the rest."""

    seq: int
    type: str
    ts: int = 0
    from_: str = msgspec.field(name="from", default="")
    to: str = ""
    client_id: str = ""
    id: str = ""


Event = MessageEvent | ReceiptEvent


def encode_event(event: Event) -> bytes:
    # The module-level function is safe to call from the store's writer thread.
    return msgspec.json.encode(event)


_SEQ0 = b'{"seq":0'


def message_tail(event: msgspec.Struct) -> bytes:
    """The encoding of `event` (any event struct, made with seq 0) after its seq, which is
    always the first field."""
    raw = msgspec.json.encode(event)
    assert raw.startswith(_SEQ0)
    return raw[len(_SEQ0) :]


def with_seq(seq: int, tail: bytes) -> bytes:
    return b'{"seq":%d' % seq + tail


def peek(raw: bytes) -> EventPeek:
    return msgspec.json.decode(raw, type=EventPeek)


def typing_frame(sender: str, group: str | None = None) -> bytes:
    if group is not None:
        return msgspec.json.encode({"type": "typing", "from": sender, "group": group})
    return msgspec.json.encode({"type": "typing", "from": sender})
