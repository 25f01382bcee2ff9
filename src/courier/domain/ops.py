"""Store operations and their results: the vocabulary of the `Store` port.

Every mutation is an operation submitted to the store's single writer (per shard), which
applies a whole queue of them in one durable commit (group commit). Seq numbers are allocated
there, so they are gap-free and race-free without locks.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Published(msgspec.Struct, frozen=True):
    """An event appended to `user`'s timeline, ready to push: `data` is the wire JSON."""

    user: str
    seq: int
    data: bytes


class CreateUser(msgspec.Struct, frozen=True):
    username: str
    password_hash: str
    ts: int


class PutToken(msgspec.Struct, frozen=True):
    token_hash: bytes
    username: str
    device: str
    ts: int


class DeleteToken(msgspec.Struct, frozen=True):
    token_hash: bytes


class AppendMessage(msgspec.Struct, frozen=True):
    """A 1:1 message: appended to the recipient's timeline, then to the sender's."""

    sender: str
    recipient: str
    body: str
    client_id: str
    ts: int
    id: str


class SendResult(msgspec.Struct, frozen=True):
    """The answer to a send. `seq` is the sender's outgoing copy; `duplicate` marks a retry
    answered from the original, in which case `published` is empty."""

    id: str
    seq: int
    ts: int
    client_id: str
    duplicate: bool
    published: tuple[Published, ...] = ()


class AdvanceAck(msgspec.Struct, frozen=True):
    """A device's cumulative delivered-ack. The result is the user's ack watermark (the max
    over devices) before and after, clamped to the committed head."""

    user: str
    device: str
    seq: int


class AckAdvance(msgspec.Struct, frozen=True):
    before: int
    after: int


class MarkRead(msgspec.Struct, frozen=True):
    """`user` has read messages from `peer` up to `seq` of user's own timeline. The result is
    the sender-side seq (in `peer`'s timeline) of the newest incoming message covered, or 0."""

    user: str
    peer: str
    seq: int


class AppendReceipt(msgspec.Struct, frozen=True):
    """Append a receipt to `owner`'s timeline if `up_to` advances the (owner, peer, status)
    marker; the result is the published receipt or None when nothing advanced."""

    owner: str
    peer: str
    status: Literal["delivered", "read"]
    up_to: int
    ts: int


class Sweep(msgspec.Struct, frozen=True):
    """Retention: drop timeline events older than `cutoff_ts`, for up to `max_users` users
    starting after `start_user`. The result is (events dropped, last user visited or "")."""

    cutoff_ts: int
    start_user: str
    max_users: int


WriteOp = (
    CreateUser
    | PutToken
    | DeleteToken
    | AppendMessage
    | AdvanceAck
    | MarkRead
    | AppendReceipt
    | Sweep
)


class UserRecord(msgspec.Struct, frozen=True):
    username: str
    password_hash: str
    created: int


class TokenRecord(msgspec.Struct, frozen=True):
    username: str
    device: str
    created: int


class Conversation(msgspec.Struct, frozen=True):
    peer: str
    last_seq: int
    last: bytes
    unread: int
