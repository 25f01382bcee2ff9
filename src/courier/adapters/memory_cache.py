"""The embedded default cache: an in-process LRU of recent-conversation views."""

from __future__ import annotations

import time
from collections import OrderedDict

from courier.ports import CachedView


class MemoryCache:
    """Bounded by users (LRU) and by age (`ttl`), so a missed invalidation heals itself.

    Generations: every invalidation takes a fresh number from one counter; a fill started
    before the user's latest invalidation is refused. Invalidation marks are kept for the most
    recent users only; a fill older than the oldest forgotten mark is refused too.
    """

    def __init__(self, max_users: int = 10_000, ttl: float = 300.0) -> None:
        self._views: OrderedDict[str, tuple[float, CachedView]] = OrderedDict()
        self._marks: OrderedDict[str, int] = OrderedDict()
        self._max = max_users
        self._ttl = ttl
        self._epoch = 0
        self._floor = 0  # the newest mark forgotten so far

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        self._views.clear()

    @property
    def healthy(self) -> bool:
        return True

    async def get(self, user: str) -> CachedView | None:
        entry = self._views.get(user)
        if entry is None:
            return None
        born, view = entry
        if time.monotonic() - born > self._ttl:
            del self._views[user]
            return None
        self._views.move_to_end(user)
        return view

    async def generation(self, user: str) -> int:
        return self._epoch

    async def fill(self, user: str, generation: int, view: CachedView) -> None:
        mark = self._marks.get(user, self._floor)
        if mark > generation:
            return  # invalidated while the view was being read from the store
        self._views[user] = (time.monotonic(), view)
        self._views.move_to_end(user)
        while len(self._views) > self._max:
            self._views.popitem(last=False)

    def invalidate(self, user: str) -> None:
        self._views.pop(user, None)
        self._epoch += 1
        self._marks[user] = self._epoch
        self._marks.move_to_end(user)
        if len(self._marks) > 2 * self._max:
            _, forgotten = self._marks.popitem(last=False)
            self._floor = max(self._floor, forgotten)
