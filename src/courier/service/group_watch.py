"""Which groups this node must hear about: those with a member connected here.

The broker carries a group message once per interested node (a subject per group), so the
node watches a group while it holds a connection of any of its members: from a user's first
connection here (their groups are read from the store) to their last, and as membership
events for users held here add or remove them. Envelopes published before a new watch took
effect are not lost: the user's connections then catch up from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import msgspec

from courier.ports import Broker, Store

log = logging.getLogger(__name__)

USER_GROUPS_LOADED = 10_000
_MARK = b'"type":"group"'


class _Membership(msgspec.Struct):
    group: str
    action: str
    member: str | None = None


_decode = msgspec.json.Decoder(_Membership).decode


class GroupWatch:
    def __init__(self, broker: Broker, store: Store, resync: Callable[[str], None]) -> None:
        self._broker = broker
        self._store = store
        self._resync = resync
        self._groups_of: dict[str, set[str]] = {}  # users held here -> groups watched for them
        self._tasks: set[asyncio.Task[None]] = set()

    def online(self, user: str) -> None:
        """The first connection of `user` on this node."""
        self._groups_of.setdefault(user, set())
        task = asyncio.get_running_loop().create_task(self._load(user))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def offline(self, user: str) -> None:
        """The last connection of `user` on this node closed."""
        for gid in self._groups_of.pop(user, ()):
            self._broker.unwatch_group(gid)

    def seen(self, user: str, data: bytes) -> None:
        """An event for `user`, held here: a membership event changes what is watched."""
        if _MARK not in data[:48] or user not in self._groups_of:
            return
        try:
            event = _decode(data)
        except msgspec.DecodeError:
            return
        if event.action == "created" or (event.action == "added" and event.member == user):
            if self._watch(user, event.group):
                self._after_watch(user)
        elif event.action in ("removed", "left") and event.member == user:
            groups = self._groups_of.get(user)
            if groups is not None and event.group in groups:
                groups.discard(event.group)
                self._broker.unwatch_group(event.group)

    def _watch(self, user: str, gid: str) -> bool:
        groups = self._groups_of.get(user)
        if groups is None or gid in groups:
            return False
        groups.add(gid)
        self._broker.watch_group(gid)
        return True

    async def _load(self, user: str) -> None:
        try:
            states = await self._store.user_groups(user, USER_GROUPS_LOADED)
        except Exception:
            log.warning(
                "cannot read the groups of a user; their live group messages wait for a resync"
            )
            return
        added = [self._watch(user, state.id) for state in states]
        if any(added):
            await self._settle(user)

    def _after_watch(self, user: str) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(user))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, user: str) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._broker.settled()
        if user in self._groups_of:
            self._resync(user)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
