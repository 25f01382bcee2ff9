"""Presence (PROTOCOL.md, "Presence"): who is online, told to their contacts as it changes.

A user is online while any of their connections (WebSocket or held long-poll) is open on any
node. The registry tells this service when a user's first connection on this node opens and
when the last one closes. Changes are coalesced so that reconnecting costs nothing:
- the last connection closing starts a grace period (`presence_grace_s`); a connection that
  opens within it cancels it, and no frame goes out at all;
- a first connection here asks the other nodes (broker.held_elsewhere) whether they hold the
  user already, and says nothing if one does; a grace period ending here asks the same before
  saying "offline".
Only real changes reach the contacts (the peers of the user's 1:1 conversations, at most
CONTACTS_MAX, less those who blocked the user), as ephemeral frames
`{"type":"presence","user","online","last_seen"}` through the broker, never stored. The
time the last connection closed is stored as the user's `last_seen`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from courier.domain.errors import CourierError, bad_request
from courier.domain.groups import is_group
from courier.domain.names import valid_username
from courier.domain.ops import SetLastSeen
from courier.metrics import Metrics
from courier.ports import TYPING, Broker, Envelope, Store
from courier.service.accounts import Session, now_ms
from courier.service.blocks import BLOCKS_MAX

log = logging.getLogger(__name__)

CONTACTS_MAX = 1000  # contacts told of a change (the most recent conversations)
QUERY_MAX = 100  # users one GET /v1/presence may ask about


class PresenceEntry(msgspec.Struct, frozen=True):
    user: str
    online: bool | None
    last_seen: int | None


def presence_frame(user: str, online: bool, last_seen: int) -> bytes:
    frame = {"type": "presence", "user": user, "online": online, "last_seen": last_seen}
    return msgspec.json.encode(frame)


class Presence:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        metrics: Metrics,
        *,
        local_count: Callable[[str], int],
        grace_s: float = 10.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._broker = broker
        self._metrics = metrics
        self._local_count = local_count  # connections of a user on this node
        self.grace_s = grace_s
        self._clock = clock
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.frames_sent = 0  # presence frames published (for the bench and /metrics)
        self.changes = 0  # online/offline changes told

    # ---- the registry's hooks ------------------------------------------------------------
    def connected(self, user: str) -> None:
        """The user's first connection on this node opened."""
        timer = self._grace.pop(user, None)
        if timer is not None:
            timer.cancel()  # back within the grace period: nothing changed for anyone
            return
        self._spawn(self._went_online(user, self._clock()))

    def disconnected(self, user: str) -> None:
        """The user's last connection on this node closed."""
        closed_at = self._clock()
        loop = asyncio.get_running_loop()
        old = self._grace.pop(user, None)
        if old is not None:
            old.cancel()
        self._grace[user] = loop.call_later(self.grace_s, self._grace_over, user, closed_at)

    def _grace_over(self, user: str, closed_at: int) -> None:
        self._grace.pop(user, None)
        if self._local_count(user) == 0:
            self._spawn(self._went_offline(user, closed_at))

    async def idle(self) -> None:
        """Return once the changes being told now are told (tests and the bench)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def close(self) -> None:
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()
        for task in self._tasks:
            task.cancel()

    # ---- changes ---------------------------------------------------------------------------
    async def _went_online(self, user: str, ts: int) -> None:
        if await self._broker.held_elsewhere(user) or self._local_count(user) == 0:
            return  # online already (another node), or gone again meanwhile
        await self._tell(user, True, ts)

    async def _went_offline(self, user: str, closed_at: int) -> None:
        if self._local_count(user) or user in self._grace:
            return  # back meanwhile
        if await self._broker.held_elsewhere(user):
            return  # still online on another node, which will say when that ends
        try:
            await self._store.submit(SetLastSeen(user, closed_at))
        except CourierError as exc:
            log.warning("recording when %s was last seen failed: %s", user, exc.message)
        await self._tell(user, False, closed_at)

    async def _tell(self, user: str, online: bool, ts: int) -> None:
        rows = await self._store.conversations(user, CONTACTS_MAX)
        contacts = [c.peer for c in rows if not is_group(c.peer)]
        blockers = await self._store.blockers_among(user, contacts)
        frame = presence_frame(user, online, ts)
        told = 0
        for contact in contacts:
            if contact not in blockers:
                self._broker.publish(Envelope(contact, TYPING, 0, frame))
                told += 1
        self.frames_sent += told
        self.changes += 1
        self._metrics.presence_frames.inc(told)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a presence change failed", exc_info=task.exception())

    # ---- GET /v1/presence ------------------------------------------------------------------
    async def query(self, session: Session, users: list[str]) -> list[PresenceEntry]:
        """The presence of each of `users` the caller has a 1:1 conversation with and has not
        blocked; null for anyone else. (Someone who blocked the caller still shows: the
        blocked are not told.)"""
        if not 1 <= len(users) <= QUERY_MAX:
            raise bad_request(f"users names 1..{QUERY_MAX} usernames, separated by commas.")
        me = session.username
        names = list(dict.fromkeys(u for u in users if valid_username(u) and u != me))
        contacts = await self._store.contacts_among(me, names)
        mine = set(await self._store.blocks(me, BLOCKS_MAX)) if contacts else set()
        visible = [u for u in names if u in contacts and u not in mine]
        online = await asyncio.gather(*(self._online(u) for u in visible))
        now = self._clock()
        known: dict[str, PresenceEntry] = {}
        for user, on in zip(visible, online, strict=True):
            if on:
                known[user] = PresenceEntry(user, True, now)
            else:
                record = await self._store.get_user(user)
                seen = record.last_seen if record is not None and record.last_seen else None
                known[user] = PresenceEntry(user, False, seen)
        return [known.get(u, PresenceEntry(u, None, None)) for u in users]

    async def _online(self, user: str) -> bool:
        if self._local_count(user) or user in self._grace:
            return True
        return await self._broker.held_elsewhere(user)
