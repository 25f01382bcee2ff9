"""The seed's recent-conversations cache, in front of the store.

A user's view holds their most recent conversations (up to CONVERSATIONS) and the newest
RECENT_MESSAGES of the first RECENT_CONVERSATIONS of them: what a client shows when it opens.
Every change to a user's conversations (a message in or out, a read marker) invalidates the
view; the next read refills it from the store. A miss, a refused fill or a failing cache is
never an error: the answer then comes from the store.
"""

from __future__ import annotations

import logging

from courier.domain.ops import Conversation
from courier.metrics import Metrics
from courier.ports import Cache, CachedView, Store

log = logging.getLogger(__name__)

CONVERSATIONS = 50
RECENT_CONVERSATIONS = 5
RECENT_MESSAGES = 15


class RecentConversations:
    def __init__(self, store: Store, cache: Cache, metrics: Metrics) -> None:
        self._store = store
        self._cache = cache
        self._metrics = metrics

    def invalidate(self, user: str) -> None:
        try:
            self._cache.invalidate(user)
        except Exception:
            log.warning("cache invalidation failed for a user", exc_info=True)

    async def conversations(self, user: str, limit: int) -> list[Conversation]:
        if limit <= CONVERSATIONS:
            view = await self._view(user)
            if view is not None and (view.complete or len(view.conversations) >= limit):
                return view.conversations[:limit]
        return await self._store.conversations(user, limit)

    async def first_page(self, user: str, peer: str, limit: int) -> list[tuple[int, bytes]] | None:
        """The newest `limit` messages with `peer` (plus one, to tell whether there are more),
        when the view has them; None sends the caller to the store."""
        if limit > RECENT_MESSAGES:
            return None
        view = await self._view(user)
        if view is None or peer not in view.recent:
            return None
        return view.recent[peer][: limit + 1]

    async def _view(self, user: str) -> CachedView | None:
        try:
            view = await self._cache.get(user)
        except Exception:
            log.warning("cache read failed; serving from the store", exc_info=True)
            self._metrics.hot.cache["error"] += 1
            return None
        if view is not None:
            self._metrics.hot.cache["hit"] += 1
            return view
        self._metrics.hot.cache["miss"] += 1
        try:
            generation = await self._cache.generation(user)
        except Exception:
            return None
        conversations = await self._store.conversations(user, CONVERSATIONS + 1)
        recent = {
            c.peer: await self._store.history(user, c.peer, None, RECENT_MESSAGES + 1)
            for c in conversations[:RECENT_CONVERSATIONS]
        }
        view = CachedView(
            conversations[:CONVERSATIONS], len(conversations) <= CONVERSATIONS, recent
        )
        try:
            await self._cache.fill(user, generation, view)
        except Exception:
            log.warning("cache fill failed", exc_info=True)
        return view
