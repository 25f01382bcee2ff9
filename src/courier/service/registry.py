"""Per node: user -> live connections (WebSocket connections and held long-polls).

The registry is the broker's sink: an envelope for a user is handed to each of that user's
subscribers here. Subscribers only enqueue; they never block the dispatch.
"""

from __future__ import annotations

import time
from typing import Protocol

from courier.domain.errors import too_many_connections
from courier.domain.events import with_seq
from courier.metrics import Metrics
from courier.ports import EVENT, GROUP, RESYNC, REVOKE, Broker, Envelope, Store
from courier.service.group_watch import GroupWatch


class PresenceHooks(Protocol):
    def connected(self, user: str) -> None: ...

    def disconnected(self, user: str) -> None: ...


class Subscriber(Protocol):
    user: str
    conn_id: str
    token_hash: bytes

    def deliver(self, envelope: Envelope) -> None: ...

    def revoke(self) -> None:
        """The token this subscriber authenticated with was revoked: end it."""
        ...


class Registry:
    def __init__(self, broker: Broker, metrics: Metrics, max_per_user: int) -> None:
        self._broker = broker
        self._metrics = metrics
        self.max_per_user = max_per_user
        self._by_user: dict[str, set[Subscriber]] = {}
        self.groups: GroupWatch | None = None  # set when the node must watch groups
        self.presence: PresenceHooks | None = None  # told of first and last connections

    def watch_groups(self, store: Store) -> GroupWatch:
        """Watch the groups of the users held here (cluster brokers need it)."""
        self.groups = GroupWatch(self._broker, store, self.resync)
        return self.groups

    def resync(self, user: str) -> None:
        """`user`'s connections catch up from the store (envelopes may have been missed)."""
        for sub in tuple(self._by_user.get(user, ())):
            sub.deliver(Envelope(user, RESYNC))

    def add(self, sub: Subscriber) -> None:
        subs = self._by_user.get(sub.user)
        if subs is None:
            subs = self._by_user[sub.user] = set()
            self._broker.watch(sub.user)
            if self.groups is not None:
                self.groups.online(sub.user)
            if self.presence is not None:
                self.presence.connected(sub.user)
        elif len(subs) >= self.max_per_user:
            raise too_many_connections(self.max_per_user)
        subs.add(sub)

    def ensure_room(self, user: str) -> None:
        """Refuse early (before a WebSocket upgrade) when the user is at the cap."""
        if self.count(user) >= self.max_per_user:
            raise too_many_connections(self.max_per_user)

    def remove(self, sub: Subscriber) -> None:
        subs = self._by_user.get(sub.user)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._by_user[sub.user]
            self._broker.unwatch(sub.user)
            if self.groups is not None:
                self.groups.offline(sub.user)
            if self.presence is not None:
                self.presence.disconnected(sub.user)

    def count(self, user: str) -> int:
        return len(self._by_user.get(user, ()))

    def subscribers(self) -> list[Subscriber]:
        return [s for subs in self._by_user.values() for s in subs]

    def dispatch(self, env: Envelope) -> None:
        if env.kind == GROUP:
            self._dispatch_group(env)
            return
        if env.kind == RESYNC:
            for sub in self.subscribers():
                sub.deliver(env)
            return
        subs = self._by_user.get(env.user)
        if not subs:
            return
        if env.kind == REVOKE:
            for sub in tuple(subs):
                if sub.token_hash == env.data:
                    sub.revoke()
            return
        if env.kind == EVENT:
            if env.t0:
                self._metrics.send_to_push.observe(max(time.time() - env.t0, 0.0))
            if self.groups is not None:
                self.groups.seen(env.user, env.data)
        for sub in tuple(subs):
            sub.deliver(env)

    def _dispatch_group(self, env: Envelope) -> None:
        """One envelope for a whole group: each member held here gets its own event (its
        seq spliced before the shared tail), built only for members with connections."""
        if env.t0:
            self._metrics.send_to_push.observe(max(time.time() - env.t0, 0.0))
        by_user, tail, skip = self._by_user, env.data, env.skip
        for user, seq in zip(env.members, env.seqs, strict=True):
            subs = by_user.get(user)
            if subs:
                event = Envelope(user, EVENT, seq, with_seq(seq, tail), skip)
                for sub in tuple(subs):
                    sub.deliver(event)
