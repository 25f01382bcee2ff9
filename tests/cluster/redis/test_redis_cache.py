"""The Redis cache adapter against a real Redis, and the service falling through when Redis
is gone."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from courier.adapters.redis_cache import RedisCache
from courier.domain.ops import Conversation
from courier.ports import CachedView
from courier.service.delivery import Delivery
from tests.cluster.redis.conftest import RedisServer
from tests.service.conftest import Stack, build_stack

VIEW = CachedView([Conversation("bob", 3, b'{"seq":3}', 1)], True, {"bob": [(3, b'{"seq":3}')]})


@pytest.fixture
async def cache(redis_server: RedisServer) -> AsyncIterator[RedisCache]:
    c = RedisCache(redis_server.url, ttl=60)
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def test_a_filled_view_reads_back(cache: RedisCache) -> None:
    assert cache.healthy
    assert await cache.get("alice") is None
    await cache.fill("alice", await cache.generation("alice"), VIEW)
    assert await cache.get("alice") == VIEW


async def test_keys_are_hash_tagged_by_user(cache: RedisCache, redis_server: RedisServer) -> None:
    import redis.asyncio as redis

    await cache.fill("alice", await cache.generation("alice"), VIEW)
    cache.invalidate("bob")
    await cache.close()
    client = redis.Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in await client.keys("*"))
    await client.aclose()
    assert keys == ["courier:{alice}:view", "courier:{bob}:gen"]


async def test_invalidation_drops_the_view_and_refuses_a_racing_fill(
    cache: RedisCache, redis_server: RedisServer
) -> None:
    generation = await cache.generation("alice")
    await cache.fill("alice", generation, VIEW)
    cache.invalidate("alice")
    await cache.close()  # waits for the pipelined invalidation
    again = RedisCache(redis_server.url, ttl=60)
    await again.start()
    try:
        assert await again.get("alice") is None
        await again.fill("alice", generation, VIEW)  # read before the invalidation: refused
        assert await again.get("alice") is None
        await again.fill("alice", await again.generation("alice"), VIEW)
        assert await again.get("alice") == VIEW
    finally:
        await again.close()


@pytest.fixture
async def stack(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Stack]:
    s = await build_stack(tmp_path / "store")
    cache = RedisCache(redis_server.url, ttl=60, timeout=0.2)
    await cache.start()
    s.delivery = Delivery(
        s.store,
        s.broker,
        s.metrics,
        body_max_chars=4096,
        send_rate=1e6,
        send_burst=10**6,
        typing_rate=1e6,
        typing_burst=10**6,
        cache=cache,
    )
    try:
        yield s
    finally:
        await cache.close()
        await s.store.close()


async def test_the_service_serves_from_redis_and_falls_through_when_it_dies(
    stack: Stack, redis_server: RedisServer
) -> None:
    alice, _ = await stack.user("alice"), await stack.user("bob")
    await stack.delivery.send(alice, "bob", "hello", "c1")
    first = await stack.delivery.conversations(alice, 50)
    assert await stack.delivery.conversations(alice, 50) == first
    assert stack.metrics.hot.cache["hit"] == 1

    redis_server.stop()
    await stack.delivery.send(alice, "bob", "still works", "c2")
    (conv,) = await stack.delivery.conversations(alice, 50)
    assert json.loads(conv.last)["body"] == "still works"
    assert stack.metrics.hot.cache["error"] >= 1

    redis_server.start()
    await stack.delivery.send(alice, "bob", "back", "c3")
    (conv,) = await stack.delivery.conversations(alice, 50)
    assert json.loads(conv.last)["body"] == "back"
