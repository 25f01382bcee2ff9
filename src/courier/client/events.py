"""Typed frames and events of the wire contract, decoded and validated in one msgspec step."""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, tag="message", tag_field="type", rename={"from_": "from"}):
    """A message in the reader's timeline: incoming, or an outgoing copy of one we sent."""

    seq: int
    id: str
    from_: str
    to: str
    body: str
    ts: int
    client_id: str | None = None


class Receipt(msgspec.Struct, tag="receipt", tag_field="type"):
    """``peer`` has delivered or read our outgoing timeline entries up to ``up_to``."""

    seq: int
    status: str
    peer: str
    up_to: int
    ts: int = 0


class Typing(msgspec.Struct, tag="typing", tag_field="type", rename={"from_": "from"}):
    """``from_`` is typing to us; ephemeral, never stored, carries no seq."""

    from_: str


class Sent(msgspec.Struct, tag="sent", tag_field="type"):
    """The server stored a send durably; ``seq`` is the sender's outgoing copy."""

    id: str
    seq: int
    ts: int
    client_id: str


class Hello(msgspec.Struct, tag="hello", tag_field="type"):
    """First frame of every WebSocket: who we are and the head of our timeline."""

    username: str
    last_seq: int


class Synced(msgspec.Struct, tag="synced", tag_field="type"):
    """End of the events answering a ``sync`` frame."""

    last_seq: int
    more: bool = False


class Pong(msgspec.Struct, tag="pong", tag_field="type"):
    """Answer to a ``ping`` frame."""


class ErrorFrame(msgspec.Struct, tag="error", tag_field="type"):
    """An error on the WebSocket; ``ref`` names the ``client_id`` of a failed send."""

    code: str
    message: str = ""
    ref: str | None = None


TimelineEvent = Message | Receipt
Event = Message | Receipt | Typing
ServerFrame = Message | Receipt | Typing | Sent | Hello | Synced | Pong | ErrorFrame


class EventPage(msgspec.Struct):
    """Answer of ``GET /v1/events``."""

    events: list[TimelineEvent]
    last_seq: int
    more: bool = False


class Conversation(msgspec.Struct):
    """One peer we talk to, its newest event and how many of its messages we have not read."""

    peer: str
    last: TimelineEvent | None = None
    unread: int = 0


class ConversationList(msgspec.Struct):
    conversations: list[Conversation]


class HistoryPage(msgspec.Struct):
    """Newest-first page of one conversation; pass ``next_before`` to get the older page."""

    messages: list[TimelineEvent]
    next_before: int | None = None


class Session(msgspec.Struct):
    token: str
    username: str


class WireError(msgspec.Struct):
    code: str
    message: str = ""


class ErrorBody(msgspec.Struct):
    error: WireError


_frame_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)


def decode_frame(data: str | bytes) -> ServerFrame | None:
    """Decode one server frame; None for a frame this client does not understand."""
    try:
        return _frame_decoder.decode(data)
    except msgspec.DecodeError:
        return None
