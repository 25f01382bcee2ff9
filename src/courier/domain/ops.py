"""Store operations and their results: the vocabulary of the `Store` port.

Every mutation is an operation submitted to the store's single writer (per shard), which
applies a whole queue of them in one durable commit (group commit). Seq numbers are allocated
there, so they are gap-free and race-free without locks.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from courier.domain.groups import GroupState


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
    """A login: a new token of `username`, its session id (`device`), created and last used
    at `ts`, with the user agent it was given (already bounded)."""

    token_hash: bytes
    username: str
    device: str
    ts: int
    user_agent: str = ""


class DeleteToken(msgspec.Struct, frozen=True):
    """A logout or an ended session: the token and its place in its user's sessions."""

    token_hash: bytes
    username: str
    device: str


class TouchToken(msgspec.Struct, frozen=True):
    """A token was used at `ts`: its last-used time moves up (never down), and a token
    deleted meanwhile stays deleted. `created` is set only for a token written before
    sessions were listed (no last use recorded): it joins its user's sessions if missing."""

    token_hash: bytes
    username: str
    device: str
    ts: int
    created: int = 0


class SetProfile(msgspec.Struct, frozen=True):
    """`username`'s display name (already cleaned) and its search terms change together;
    the result is the UserRecord after the change, or None for an unknown user."""

    username: str
    display_name: str


class SetBlock(msgspec.Struct, frozen=True):
    """`owner` blocks (`on`) or unblocks `target`: from then on the target's 1:1 messages,
    receipts, typing and presence do not reach the owner. Idempotent; the result is None."""

    owner: str
    target: str
    on: bool


class SetLastSeen(msgspec.Struct, frozen=True):
    """`user` went offline: their last connection closed at `ts` (only ever moves up)."""

    user: str
    ts: int


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
    fanout: GroupFanout | None = None


class AppendGroupMessage(msgspec.Struct, frozen=True):
    """A group message: its body once in the group's log, and a reference to it in the
    timeline of every member (the sender's is its outgoing copy), in one atomic write."""

    sender: str
    group: str
    body: str
    client_id: str
    ts: int
    id: str


class GroupFanout(msgspec.Struct, frozen=True):
    """A stored group message, ready to push: member i's event is `{"seq":seqs[i]` + tail."""

    group: str
    tail: bytes
    members: tuple[str, ...]
    seqs: tuple[int, ...]


class CreateGroup(msgspec.Struct, frozen=True):
    """A new group, `owner` and `members` in it; 404 `unknown_user` makes nothing."""

    id: str
    name: str
    owner: str
    members: tuple[str, ...]
    ts: int
    max_members: int
    max_groups: int = 500  # groups a user may be in (each member, the owner included)


class ChangeGroup(msgspec.Struct, frozen=True):
    """A change decided under the writer by domain.groups: `rename` (name), `add` (member,
    role: a new member, or a new role for one), `remove` (member; by == member leaves)."""

    id: str
    by: str
    kind: Literal["rename", "add", "remove"]
    ts: int
    member: str = ""
    role: str = "member"
    name: str = ""
    max_members: int = 1000
    max_groups: int = 500


class GroupResult(msgspec.Struct, frozen=True):
    """The group after a create or change (None when its last member left), and the
    membership events appended."""

    group: GroupState | None
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
    the sender-side seq (in `peer`'s timeline) of the newest incoming message covered, or 0.
    For a group (`peer` is its id) the result is a tuple of (author, author's seq) pairs, one
    per author of the messages newly covered (empty for groups without receipts)."""

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
    group: str = ""  # a receipt for group messages: markers per (owner, group, peer)


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
    | TouchToken
    | SetProfile
    | SetBlock
    | SetLastSeen
    | AppendMessage
    | AppendGroupMessage
    | CreateGroup
    | ChangeGroup
    | AdvanceAck
    | MarkRead
    | AppendReceipt
    | Sweep
)


class UserRecord(msgspec.Struct, frozen=True):
    """A user as stored; records written before profiles decode with no display name."""

    username: str
    password_hash: str
    created: int
    display_name: str = ""
    last_seen: int = 0  # when the user's last connection closed (0: never recorded)


class TokenRecord(msgspec.Struct, frozen=True):
    """A bearer token as stored. `device` is its session id, public (not the token).
    Records written before sessions were listed have neither `last_used` (0: unknown) nor
    `user_agent`; they decode with these defaults."""

    username: str
    device: str
    created: int
    last_used: int = 0
    user_agent: str = ""


class SessionRecord(msgspec.Struct, frozen=True):
    """One of a user's sessions as listed: the token it stands for and when it was used."""

    id: str
    token_hash: bytes
    created: int
    last_used: int
    user_agent: str


class Conversation(msgspec.Struct, frozen=True):
    peer: str
    last_seq: int
    last: bytes
    unread: int
