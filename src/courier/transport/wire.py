"""Request bodies and WebSocket frames, decoded and validated in one step by msgspec.

Unknown fields are ignored (clients may extend); wrong types, missing fields and broken
limits fail decoding with a message that names the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec

from courier.domain.names import USERNAME_PATTERN
from courier.transport.wire_seq import Seq, whole

T = TypeVar("T")

# msgspec checks patterns with `re.search`, where `$` also matches before a trailing newline:
# the service checks names again with a full match (domain.names.valid_username).
Username = Annotated[str, msgspec.Meta(pattern=USERNAME_PATTERN)]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
AnyName = Annotated[str, msgspec.Meta(max_length=64)]  # checked by the service (404, not 400)
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Body = str  # its bound is configurable, so the service checks it
SESSION_ID_PATTERN = "^[0-9a-f]{16}$"
SESSION_ID = re.compile(SESSION_ID_PATTERN[1:-1])  # a path parameter, matched whole


class Credentials(msgspec.Struct):
    username: Username
    password: Password


class LoginBody(msgspec.Struct):
    username: AnyName
    password: Annotated[str, msgspec.Meta(max_length=256)]


GroupId = Annotated[str, msgspec.Meta(max_length=64)]  # checked by the service (404)
GroupName = str  # 1..64 code points, checked by the service
MembersList = Annotated[list[AnyName], msgspec.Meta(max_length=100_000)]


class SendBody(msgspec.Struct):
    body: Body
    client_id: ClientId
    to: AnyName | None = None
    group: GroupId | None = None


class ProfileBody(msgspec.Struct):
    display_name: str  # 0..64 code points, checked by the service


class CreateGroupBody(msgspec.Struct):
    name: GroupName
    members: MembersList = msgspec.field(default_factory=list)


class RenameGroupBody(msgspec.Struct):
    name: GroupName


class AddMemberBody(msgspec.Struct):
    username: AnyName
    role: Annotated[str, msgspec.Meta(max_length=16)] = "member"


class AckBody(msgspec.Struct):
    seq: Seq

    def __post_init__(self) -> None:
        self.seq = whole(self.seq, "seq")


class ReadBody(msgspec.Struct):
    seq: Seq
    peer: AnyName | None = None
    group: GroupId | None = None

    def __post_init__(self) -> None:
        self.seq = whole(self.seq, "seq")


# ---- WebSocket frames, client to server (tagged by "type") ----------------------------------
class AuthFrame(msgspec.Struct, tag="auth", tag_field="type"):
    token: Annotated[str, msgspec.Meta(max_length=256)]
    after: Seq | None = None

    def __post_init__(self) -> None:
        if self.after is not None:
            self.after = whole(self.after, "after")


class SendFrame(msgspec.Struct, tag="send", tag_field="type"):
    body: Body
    client_id: ClientId
    to: AnyName | None = None
    group: GroupId | None = None


class AckFrame(msgspec.Struct, tag="ack", tag_field="type"):
    seq: Seq

    def __post_init__(self) -> None:
        self.seq = whole(self.seq, "seq")


class ReadFrame(msgspec.Struct, tag="read", tag_field="type"):
    seq: Seq
    peer: AnyName | None = None
    group: GroupId | None = None

    def __post_init__(self) -> None:
        self.seq = whole(self.seq, "seq")


class SyncFrame(msgspec.Struct, tag="sync", tag_field="type"):
    after: Seq = 0
    limit: Annotated[int, msgspec.Meta(ge=1)] = 100

    def __post_init__(self) -> None:
        self.after = whole(self.after, "after")


class TypingFrame(msgspec.Struct, tag="typing", tag_field="type"):
    to: AnyName | None = None
    group: GroupId | None = None


class PingFrame(msgspec.Struct, tag="ping", tag_field="type"):
    pass


ClientFrame = AuthFrame | SendFrame | AckFrame | ReadFrame | SyncFrame | TypingFrame | PingFrame

frame_decoder = msgspec.json.Decoder(ClientFrame)
encoder = msgspec.json.Encoder()


# ---- Server to client ----------------------------------------------------------------------
class Hello(msgspec.Struct, tag="hello", tag_field="type"):
    username: str
    last_seq: int


class Sent(msgspec.Struct, tag="sent", tag_field="type"):
    client_id: str
    id: str
    seq: int
    ts: int


class Synced(msgspec.Struct, tag="synced", tag_field="type"):
    last_seq: int
    more: bool


class ErrorFrame(msgspec.Struct, tag="error", tag_field="type"):
    code: str
    message: str
    ref: str | None = None


PONG = b'{"type":"pong"}'


class _Ref(msgspec.Struct):
    client_id: Any = None


_ref_decoder = msgspec.json.Decoder(_Ref)
_REF_TEXT = re.compile(rb'"client_id"\s*:\s*"((?:[^"\\]|\\.){1,256})"')
_str_decoder = msgspec.json.Decoder(str)


def decode(decoder: msgspec.json.Decoder[T], data: bytes) -> T:
    """Decode and validate; every failure is a DecodeError with a human message.

    msgspec raises RecursionError for JSON nested deeper than the interpreter's recursion
    limit (about 1,000 levels, well inside a 64 KiB frame): that is bad input like any other.
    """
    try:
        return decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("The JSON is nested too deeply.") from None


def ref_of(data: bytes) -> str | None:
    """The client_id of a malformed frame, whenever one can be read, so the client can match
    the error to its send: from the JSON when it parses, else from the raw text."""
    try:
        ref = _ref_decoder.decode(data).client_id
    except (msgspec.DecodeError, RecursionError):
        match = _REF_TEXT.search(data)
        if match is None:
            return None
        try:
            ref = _str_decoder.decode(b'"' + match.group(1) + b'"')
        except msgspec.DecodeError:
            return None
    return ref if isinstance(ref, str) and 1 <= len(ref) <= 64 else None


def describe(exc: msgspec.DecodeError) -> str:
    """A human sentence from msgspec's message ("Expected `int`, got `str` - at `$.seq`")."""
    text = str(exc)
    return text if text.endswith(".") else text + "."
