"""The delivery engine: send, pull, ack, read, receipts, typing.

A send runs in this order: durable append to the recipient's timeline, then the sender's
(one group commit); publish through the broker; push to the recipient's devices and the
sender's other devices; answer `sent`. Receipts are events in the sender's timeline,
produced from cumulative acks and read markers; both are idempotent max-registers in the
store, so a retry or a crash between steps never duplicates or loses one.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from courier.domain.errors import CourierError, bad_request, unknown_user
from courier.domain.events import DELIVERED, READ, typing_frame
from courier.domain.groups import GroupState, is_group, unknown_group, valid_group_id
from courier.domain.ids import IdGenerator
from courier.domain.names import valid_username
from courier.domain.ops import (
    AdvanceAck,
    AppendGroupMessage,
    AppendMessage,
    AppendReceipt,
    Conversation,
    GroupFanout,
    MarkRead,
    Published,
    SendResult,
)
from courier.metrics import Metrics
from courier.ports import EVENT, GROUP, TYPING, Broker, Cache, Envelope, Store
from courier.service.accounts import Session, now_ms
from courier.service.ratelimit import KeyedLimiter
from courier.service.recent import RecentConversations

EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX = 100, 1000
HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX = 50, 200
CLIENT_ID_MAX = 64


class Delivery:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        metrics: Metrics,
        *,
        body_max_chars: int,
        send_rate: float,
        send_burst: int,
        typing_rate: float,
        typing_burst: int,
        cache: Cache | None = None,
    ) -> None:
        self._store = store
        self._recent = RecentConversations(store, cache, metrics) if cache is not None else None
        self._broker = broker
        self._metrics = metrics
        self._body_max = body_max_chars
        self._send_limit = KeyedLimiter(send_rate, send_burst)
        self._typing_limit = KeyedLimiter(typing_rate, typing_burst)
        self._ids = IdGenerator()
        store.set_fanout_sink(self._late_fanout)

    @property
    def body_max_chars(self) -> int:
        return self._body_max

    # ---- send ---------------------------------------------------------------------------
    def send(
        self,
        session: Session,
        to: str | None,
        body: str,
        client_id: str,
        *,
        skip: str = "",
        group: str | None = None,
    ) -> asyncio.Future[SendResult]:
        """Submit a send (to a user, or to a group) and return at once; the future resolves
        after the push.

        Synchronous on purpose: sends pipelined on one connection reach the store queue in
        the order they were received, so they are stored in that order.
        """
        if (to is None) == (group is None):
            raise bad_request("A send names exactly one of to and group.")
        if not 1 <= len(client_id) <= CLIENT_ID_MAX:
            raise bad_request(f"client_id must be 1..{CLIENT_ID_MAX} characters.")
        if not 1 <= len(body) <= self._body_max:
            raise CourierError(
                "body_too_long" if body else "bad_request",
                f"body must be 1..{self._body_max} characters.",
                413 if body else 400,
            )
        op: AppendMessage | AppendGroupMessage
        ts = now_ms()
        if group is not None:
            if not valid_group_id(group):
                raise unknown_group(group)
            self._send_limit.check(session.username)
            op = AppendGroupMessage(session.username, group, body, client_id, ts, self.new_id(ts))
        else:
            assert to is not None
            if not valid_username(to):
                raise unknown_user(to)
            self._send_limit.check(session.username)
            op = AppendMessage(session.username, to, body, client_id, ts, self.new_id(ts))
        stored = self._store.submit(op)
        answer: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        stored.add_done_callback(partial(self._stored, answer, time.time(), skip))
        return answer

    def _stored(
        self, answer: asyncio.Future[SendResult], t0: float, skip: str, stored: asyncio.Future[Any]
    ) -> None:
        # The publish happens whatever became of the caller (a dropped HTTP client must not
        # keep an online recipient from getting the message now).
        exc = stored.exception() if not stored.cancelled() else asyncio.CancelledError()
        if exc is not None:
            if not answer.done():
                answer.set_exception(exc)
            return
        result: SendResult = stored.result()
        if result.duplicate:
            self._metrics.hot.send_retries += 1
        elif result.fanout is not None:
            self._metrics.hot.messages_sent += 1
            fan = result.fanout
            if self._recent is not None:
                for user in fan.members:
                    self._recent.invalidate(user)
            self._broker.publish(
                Envelope(fan.group, GROUP, 0, fan.tail, skip, t0, fan.members, fan.seqs)
            )
        else:
            self._metrics.hot.messages_sent += 1
            # The incoming copy, then the outgoing one; a recipient who blocked the sender
            # has no incoming copy.
            *incoming, outgoing = result.published
            for pub in incoming:
                if self._recent is not None:
                    self._recent.invalidate(pub.user)
                self._publish(pub, t0=t0)
            if self._recent is not None:
                self._recent.invalidate(outgoing.user)
            self._publish(outgoing, skip=skip)
        if not answer.done():
            answer.set_result(result)

    def _publish(self, pub: Published, *, skip: str = "", t0: float = 0.0) -> None:
        self._broker.publish(Envelope(pub.user, EVENT, pub.seq, pub.data, skip, t0))

    def _late_fanout(self, done: GroupFanout | tuple[Published, ...]) -> None:
        """A group event the store completed after its send (a fan-out a dead node left)."""
        if isinstance(done, GroupFanout):
            if self._recent is not None:
                for user in done.members:
                    self._recent.invalidate(user)
            self._broker.publish(
                Envelope(done.group, GROUP, 0, done.tail, "", 0.0, done.members, done.seqs)
            )
        else:
            self.publish_all(done)

    def new_id(self, ts: int) -> str:
        return self._ids.new(ts)

    def publish_all(self, published: tuple[Published, ...]) -> None:
        """Events appended outside a send (membership changes): pushed, views invalidated."""
        for pub in published:
            if self._recent is not None:
                self._recent.invalidate(pub.user)
            self._publish(pub)

    # ---- pull ---------------------------------------------------------------------------
    async def events(
        self, session: Session, after: int, limit: int
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """Events with seq > after, oldest first; `more` when the limit cut the answer."""
        after, limit = _check_after(after), _clamp(limit, EVENTS_LIMIT_MAX)
        rows = await self._store.events_after(session.username, after, limit + 1)
        return rows[:limit], len(rows) > limit

    async def head(self, user: str) -> int:
        return await self._store.head(user)

    # ---- acknowledgements and receipts --------------------------------------------------
    async def ack(self, session: Session, seq: int) -> None:
        """Cumulative delivered-ack of one device; emits `delivered` receipts to senders."""
        user = session.username
        seq = await self._check_seq(user, seq)
        acked = await self._store.ack_watermark(user)
        if seq > acked:
            # Receipts first, then the watermark: a crash in between is repaired by the next
            # ack, and the receipts' max-registers drop what was already emitted.
            summary = await self._store.incoming_summary(user, acked, seq)
            await self._receipts(
                [
                    AppendReceipt(peer, user, DELIVERED, up_to, now_ms(), group)
                    for (peer, group), up_to in summary.items()
                ]
            )
        await self._store.submit(AdvanceAck(user, session.device, seq))

    async def read(
        self, session: Session, peer: str | None, seq: int, group: str | None = None
    ) -> None:
        """Messages from `peer` (or in `group`) up to `seq` of the reader's timeline are
        read."""
        user = session.username
        if (peer is None) == (group is None):
            raise bad_request("A read marker names exactly one of peer and group.")
        if group is not None:
            await self.member_group(user, group)
            seq = await self._check_seq(user, seq)
            authors: tuple[tuple[str, int], ...] = await self._store.submit(
                MarkRead(user, group, seq)
            )
            if self._recent is not None:
                self._recent.invalidate(user)
            ts = now_ms()
            await self._receipts(
                [AppendReceipt(a, user, READ, up_to, ts, group) for a, up_to in authors]
            )
            return
        assert peer is not None
        if not valid_username(peer) or await self._store.get_user(peer) is None:
            raise unknown_user(peer)
        seq = await self._check_seq(user, seq)
        up_to: int = await self._store.submit(MarkRead(user, peer, seq))
        if self._recent is not None:
            self._recent.invalidate(user)  # unread counts changed
        if up_to:
            await self._receipts([AppendReceipt(peer, user, READ, up_to, now_ms())])

    async def member_group(self, user: str, gid: str) -> GroupState:
        """The group, when `user` is a member of it; else 404 unknown_group."""
        if not valid_group_id(gid):
            raise unknown_group(gid)
        state = await self._store.get_group(gid)
        if state is None or state.member(user) is None:
            raise unknown_group(gid)
        return state

    async def _receipts(self, ops: list[AppendReceipt]) -> None:
        if not ops:
            return
        futures = [self._store.submit(op) for op in ops]
        for pub in await asyncio.gather(*futures):
            if pub is not None:
                self._publish(pub)

    async def _check_seq(self, user: str, seq: int) -> int:
        if seq < 0:
            raise bad_request("seq must not be negative.")
        head = await self._store.head(user)
        if seq > head:
            raise bad_request(f"seq {seq} is beyond the head of your timeline ({head}).")
        return seq

    # ---- typing -------------------------------------------------------------------------
    async def typing(self, session: Session, to: str | None, group: str | None = None) -> None:
        if (to is None) == (group is None):
            raise bad_request("A typing frame names exactly one of to and group.")
        if group is not None:
            self._typing_limit.check(session.username)
            state = await self.member_group(session.username, group)
            frame = typing_frame(session.username, group)
            for member in state.usernames:
                if member != session.username:
                    self._broker.publish(Envelope(member, TYPING, 0, frame))
            return
        assert to is not None
        if not valid_username(to) or to == session.username:
            raise unknown_user(to)
        self._typing_limit.check(session.username)
        if await self._store.get_user(to) is None:
            raise unknown_user(to)
        if await self._store.blocked(to, session.username):
            return  # dropped; the blocked sender is not told
        self._broker.publish(Envelope(to, TYPING, 0, typing_frame(session.username)))

    # ---- conversations and history ------------------------------------------------------
    async def conversations(self, session: Session, limit: int) -> list[Conversation]:
        limit = _clamp(limit, HISTORY_LIMIT_MAX)
        if self._recent is not None:
            return await self._recent.conversations(session.username, limit)
        return await self._store.conversations(session.username, limit)

    async def group_names(self, rows: list[Conversation]) -> dict[str, str]:
        """The current names of the groups among `rows` (a group that is gone: no name)."""
        names: dict[str, str] = {}
        for c in rows:
            if is_group(c.peer) and c.peer not in names:
                state = await self._store.get_group(c.peer)
                names[c.peer] = "" if state is None else state.name
        return names

    async def history(
        self, session: Session, peer: str, before: int | None, limit: int
    ) -> tuple[list[tuple[int, bytes]], int | None]:
        """A page of the conversation (with a user, or a group's as `user` saw it), newest
        first, and the cursor of the next page."""
        group = is_group(peer)
        if group and not valid_group_id(peer):
            raise unknown_group(peer)
        if not group and not valid_username(peer):
            raise unknown_user(peer)
        if before is not None and before < 1:
            raise bad_request("before must be a positive seq.")
        limit = _clamp(limit, HISTORY_LIMIT_MAX)
        rows = None
        if before is None and self._recent is not None:
            rows = await self._recent.first_page(session.username, peer, limit)
        if rows is None:
            rows = await self._store.history(session.username, peer, before, limit + 1)
        if not rows and group:
            await self.member_group(session.username, peer)  # never a member: 404
        elif not rows and await self._store.get_user(peer) is None:
            raise unknown_user(peer)
        page = rows[:limit]
        return page, (page[-1][0] if len(rows) > limit else None)


def _clamp(limit: int, cap: int) -> int:
    if limit < 1:
        raise bad_request("limit must be a positive integer.")
    return min(limit, cap)


def _check_after(after: int) -> int:
    if after < 0:
        raise bad_request("after must not be negative.")
    return after
