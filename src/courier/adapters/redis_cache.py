"""The cluster cache: recent-conversation views in Redis (redis-py, asyncio).

Keys are hash-tagged by user, `courier:{alice}:view` and `courier:{alice}:gen`, so one user's
cache sits on one Redis node (one cluster slot), as the seed asks. A view is stored with a TTL;
the generation counter makes a fill that raced an invalidation a no-op (checked atomically in
a Lua script). Invalidations of one loop tick go to Redis in one pipeline.

Redis is a cache here, never a source of truth: every failure is raised to the caller, which
falls through to the store, and short socket timeouts keep a dead Redis from stalling requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import redis.asyncio as redis

from courier.ports import CachedView

log = logging.getLogger(__name__)

_FILL = """
if (redis.call('GET', KEYS[2]) or '0') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 0
"""


def _view_key(user: str) -> str:
    return f"courier:{{{user}}}:view"


def _gen_key(user: str) -> str:
    return f"courier:{{{user}}}:gen"


class RedisCache:
    def __init__(self, url: str, *, ttl: float = 300.0, timeout: float = 0.5) -> None:
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._ttl = max(1, int(ttl))
        self._fill = self._client.register_script(_FILL)
        self._pending: set[str] = set()
        self._flushing: asyncio.Task[None] | None = None
        self._healthy = False
        self._decoder = msgspec.msgpack.Decoder(CachedView)

    async def start(self) -> None:
        try:
            self._healthy = bool(await self._client.ping())
        except (redis.RedisError, OSError):
            log.warning("redis is unreachable; serving conversations from the store")
            self._healthy = False

    async def close(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        await self._client.aclose()

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def _call(self, coro: Any) -> Any:
        try:
            result = await coro
        except (redis.RedisError, OSError):
            self._healthy = False
            raise
        self._healthy = True
        return result

    async def get(self, user: str) -> CachedView | None:
        raw = await self._call(self._client.get(_view_key(user)))
        return None if raw is None else self._decoder.decode(raw)

    async def generation(self, user: str) -> int:
        raw = await self._call(self._client.get(_gen_key(user)))
        return int(raw) if raw is not None else 0

    async def fill(self, user: str, generation: int, view: CachedView) -> None:
        keys = [_view_key(user), _gen_key(user)]
        args: list[bytes | str | int] = [str(generation), msgspec.msgpack.encode(view), self._ttl]
        await self._call(self._fill(keys=keys, args=args))

    def invalidate(self, user: str) -> None:
        self._pending.add(user)
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                users, self._pending = self._pending, set()
                pipe = self._client.pipeline(transaction=False)
                for user in users:
                    pipe.incr(_gen_key(user))
                    pipe.expire(_gen_key(user), 4 * self._ttl)
                    pipe.delete(_view_key(user))
                try:
                    await self._call(pipe.execute())
                except (redis.RedisError, OSError):
                    # Views expire after the TTL; an invalidation lost here is healed then.
                    log.warning("redis invalidation of %d users failed", len(users))
        finally:
            self._flushing = None
