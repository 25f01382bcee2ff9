"""Typed frames and events of the wire contract, decoded and validated in one msgspec step."""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, tag="message", tag_field="type", rename={"from_": "from"}):
    """A message in the reader's timeline: incoming, or an outgoing copy of one we sent; to
    a user (``to``) or in a group (``group``)."""

    seq: int
    id: str
    from_: str
    body: str
    ts: int
    to: str | None = None
    group: str | None = None
    client_id: str | None = None


class Receipt(msgspec.Struct, tag="receipt", tag_field="type"):
    """``peer`` has delivered or read our outgoing timeline entries up to ``up_to``."""

    seq: int
    status: str
    peer: str
    up_to: int
    ts: int = 0
    group: str | None = None  # a receipt of ``peer``, a member, for our group messages


class Typing(msgspec.Struct, tag="typing", tag_field="type", rename={"from_": "from"}):
    """``from_`` is typing to us (or in ``group``); ephemeral, never stored, carries no seq."""

    from_: str
    group: str | None = None


class Presence(msgspec.Struct, tag="presence", tag_field="type"):
    """A contact came online or went offline (``last_seen``: when their last connection
    closed, or now when online); ephemeral, never stored, carries no seq."""

    user: str
    online: bool
    last_seen: int = 0


class GroupChange(msgspec.Struct, tag="group", tag_field="type"):
    """A membership event of ``group``: ``action`` is created, added, removed, left, renamed
    or role; ``member`` and ``role`` say who and what where that applies."""

    seq: int
    group: str
    action: str
    by: str
    name: str
    ts: int
    member: str | None = None
    role: str | None = None


class Unknown(msgspec.Struct):
    """A timeline event of a type this client does not know: skipped, but its seq counts."""

    seq: int
    type: str


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


TimelineEvent = Message | Receipt | GroupChange | Unknown
Event = Message | Receipt | GroupChange | Unknown | Typing | Presence
ServerFrame = (
    Message
    | Receipt
    | GroupChange
    | Typing
    | Presence
    | Sent
    | Hello
    | Synced
    | Pong
    | ErrorFrame
    | Unknown
)
_Known = Message | Receipt | GroupChange


class EventPage(msgspec.Struct):
    """Answer of ``GET /v1/events``."""

    events: list[TimelineEvent]
    last_seq: int
    more: bool = False


class Conversation(msgspec.Struct):
    """One conversation: with a ``peer``, or a ``group`` (and its ``name``), its newest
    event and how many of its messages we have not read."""

    peer: str | None = None
    group: str | None = None
    name: str | None = None
    last: TimelineEvent | None = None
    unread: int = 0


class ConversationList(msgspec.Struct):
    conversations: list[Conversation]


class HistoryPage(msgspec.Struct):
    """Newest-first page of one conversation; pass ``next_before`` to get the older page."""

    messages: list[TimelineEvent]
    next_before: int | None = None


class GroupMember(msgspec.Struct):
    username: str
    role: str


class Group(msgspec.Struct):
    id: str
    name: str
    members: list[GroupMember]
    created_ts: int


class GroupList(msgspec.Struct):
    groups: list[Group]


class Profile(msgspec.Struct):
    """A user as others see them: the username and the display name ("" when unset)."""

    username: str
    display_name: str = ""


class ProfileList(msgspec.Struct):
    users: list[Profile]


class BlockList(msgspec.Struct):
    blocks: list[str]


class Session(msgspec.Struct):
    token: str
    username: str


class WireError(msgspec.Struct):
    code: str
    message: str = ""


class ErrorBody(msgspec.Struct):
    error: WireError


_Frame = (
    Message | Receipt | GroupChange | Typing | Presence | Sent | Hello | Synced | Pong | ErrorFrame
)
_frame_decoder: msgspec.json.Decoder[_Frame] = msgspec.json.Decoder(_Frame)
_unknown_decoder = msgspec.json.Decoder(Unknown)
_known_decoder: msgspec.json.Decoder[_Known] = msgspec.json.Decoder(_Known)


def decode_frame(data: str | bytes) -> ServerFrame | None:
    """Decode one server frame; an event of an unknown type is `Unknown` (its seq counts),
    anything else this client does not understand is None."""
    try:
        return _frame_decoder.decode(data)
    except msgspec.DecodeError:
        try:
            return _unknown_decoder.decode(data)
        except msgspec.DecodeError:
            return None


def decode_event(raw: msgspec.Raw) -> TimelineEvent:
    """A stored event: known, or `Unknown` (a type this client does not know)."""
    try:
        return _known_decoder.decode(raw)
    except msgspec.DecodeError:
        return _unknown_decoder.decode(raw)


class RawEventPage(msgspec.Struct):
    events: list[msgspec.Raw]
    last_seq: int
    more: bool = False


class RawHistoryPage(msgspec.Struct):
    messages: list[msgspec.Raw]
    next_before: int | None = None


class _RawConversation(msgspec.Struct):
    peer: str | None = None
    group: str | None = None
    name: str | None = None
    last: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    unread: int = 0


class RawConversationList(msgspec.Struct):
    conversations: list[_RawConversation]


def event_page(raw: RawEventPage) -> EventPage:
    return EventPage([decode_event(e) for e in raw.events], raw.last_seq, raw.more)


def history_page(raw: RawHistoryPage) -> HistoryPage:
    return HistoryPage([decode_event(e) for e in raw.messages], raw.next_before)


def conversation_list(raw: RawConversationList) -> list[Conversation]:
    return [
        Conversation(
            c.peer,
            c.group,
            c.name,
            None if bytes(c.last) == b"null" else decode_event(c.last),
            c.unread,
        )
        for c in raw.conversations
    ]
