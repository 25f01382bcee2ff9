"""The three ports the service depends on. Adapters implement them; config picks which."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from courier.domain.groups import GroupState
from courier.domain.ops import (
    Conversation,
    GroupFanout,
    Published,
    SessionRecord,
    TokenRecord,
    UserRecord,
    WriteOp,
)


class Store(Protocol):
    """Durable timelines, users, tokens and cursors.

    Mutations go through `submit`, which returns at once with a future resolved after the
    operation is durable (group commit). Reads are coroutines.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def healthy(self) -> bool: ...

    def submit(self, op: WriteOp) -> asyncio.Future[Any]: ...

    async def get_user(self, username: str) -> UserRecord | None: ...

    async def search_users(self, term: str, limit: int) -> list[UserRecord]:
        """Users with a search term (domain.profiles) starting with the folded `term`, at
        most `limit`, each once, in the order of their first matching term: an index range
        read."""
        ...

    async def blocks(self, owner: str, limit: int) -> list[str]:
        """The users `owner` has blocked, in name order, at most `limit`."""
        ...

    async def blocked(self, owner: str, other: str) -> bool:
        """`owner` has blocked `other`: a point read."""
        ...

    async def blockers_among(self, user: str, owners: list[str]) -> set[str]:
        """Those of `owners` who have blocked `user`: one read per server."""
        ...

    async def contacts_among(self, user: str, candidates: list[str]) -> set[str]:
        """Those of `candidates` with whom `user` has a 1:1 conversation."""
        ...

    async def get_token(self, token_hash: bytes) -> TokenRecord | None: ...

    async def sessions(self, user: str, limit: int) -> list[SessionRecord]:
        """`user`'s sessions, most recently used first, at most `limit`: one read of the
        user's own keys."""
        ...

    async def get_session(self, user: str, session_id: str) -> SessionRecord | None:
        """The session of `user` with this id, or None (also for another user's id)."""
        ...

    async def head(self, user: str) -> int: ...

    async def ack_watermark(self, user: str) -> int:
        """The highest seq any device of `user` has acknowledged."""
        ...

    async def events_after(self, user: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Events with seq > after, oldest first, at most `limit`."""
        ...

    async def incoming_summary(
        self, user: str, after: int, up_to: int
    ) -> dict[tuple[str, str], int]:
        """For incoming messages in (after, up_to] of `user`'s timeline: (sender, group or
        "") -> highest seq of the matching outgoing copies in the sender's timeline. Group
        messages count only when their group gets per-member receipts."""
        ...

    async def get_group(self, gid: str) -> GroupState | None: ...

    def set_fanout_sink(self, sink: FanoutSink) -> None:
        """Where a store hands group events it completed later than their send (a cluster
        store finishing a fan-out record a dead node left): the caller pushes them."""
        ...

    async def user_groups(self, user: str, limit: int) -> list[GroupState]:
        """The groups `user` is a member of, at most `limit`, in id order."""
        ...

    async def conversations(self, user: str, limit: int) -> list[Conversation]:
        """Most recent first."""
        ...

    async def history(
        self, user: str, peer: str, before: int | None, limit: int
    ) -> list[tuple[int, bytes]]:
        """Messages with `peer` in `user`'s timeline with seq < before, newest first."""
        ...


FanoutSink = Callable[[GroupFanout | tuple[Published, ...]], None]


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    """What the broker carries to the node(s) holding `user`'s connections."""

    user: str
    kind: int
    seq: int = 0
    data: bytes = b""
    skip: str = ""  # id of the connection that must not get this event (the sender's own)
    t0: float = 0.0  # wall-clock time the send was accepted, for the send-to-push histogram
    # A group message (kind GROUP; `user` is the group, `data` the event after its seq):
    # member i gets `{"seq":seqs[i]` + data. One envelope for all members, not one each.
    members: tuple[str, ...] = ()
    seqs: tuple[int, ...] = ()


EVENT = 1  # a timeline event (data = wire JSON)
TYPING = 2  # an ephemeral frame (data = wire JSON)
REVOKE = 3  # a token was revoked (data = token hash): close connections that used it
GROUP = 5  # a group message for its members (see Envelope.members)
PRESENCE_Q = 6  # a question, never delivered: "does a node other than `skip` hold `user`?"
RESYNC = 4  # the broker may have lost envelopes (it was cut off): every local connection
# catches up from the store (user = "", handed to every subscriber of the node)

Sink = Callable[[Envelope], None]


class Broker(Protocol):
    """Delivers envelopes to whichever node holds the user's connections."""

    async def start(self, sink: Sink) -> None: ...

    async def wait_ready(self) -> None:
        """Return once the broker is connected (callers bound the wait)."""
        ...

    async def close(self) -> None: ...

    @property
    def healthy(self) -> bool: ...

    def publish(self, envelope: Envelope) -> None:
        """Fire and forget: a lost envelope is recovered by the client's resync by seq."""
        ...

    def watch(self, user: str) -> None:
        """This node now holds a connection of `user`."""
        ...

    def unwatch(self, user: str) -> None:
        """This node holds no connection of `user` any more."""
        ...

    def watch_group(self, gid: str) -> None:
        """This node holds a connection of a member of `gid` (counted: one call per member
        held; unwatch_group as many times)."""
        ...

    def unwatch_group(self, gid: str) -> None: ...

    async def settled(self) -> None:
        """Return once the watches made so far are in effect (callers bound the wait)."""
        ...

    async def held_elsewhere(self, user: str) -> bool:
        """Whether another node holds a connection of `user` now (presence across nodes);
        False when no answer comes in a fraction of a second."""
        ...


class CachedView(msgspec.Struct, frozen=True):
    """The seed's recent-conversations cache for one user: the most recent conversations and
    the newest messages of the first few, as the store would answer them."""

    conversations: list[Conversation]
    complete: bool  # True when `conversations` holds every conversation of the user
    recent: dict[str, list[tuple[int, bytes]]]  # peer -> newest messages, newest first


class Cache(Protocol):
    """Recent conversations per user. A miss or a failure is never an error: the caller falls
    through to the store."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def healthy(self) -> bool: ...

    async def get(self, user: str) -> CachedView | None: ...

    async def fill(self, user: str, generation: int, view: CachedView) -> None:
        """Store `view` unless `user` was invalidated since `generation` was read."""
        ...

    async def generation(self, user: str) -> int: ...

    def invalidate(self, user: str) -> None:
        """Non-blocking; adapters may batch invalidations of one loop tick."""
        ...
