"""The recent-conversations cache in front of the store (embedded in-process LRU)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from courier.adapters.memory_cache import MemoryCache
from courier.ports import CachedView
from courier.service.delivery import Delivery
from tests.service.conftest import Stack, build_stack


@pytest.fixture
async def cached(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await build_stack(tmp_path / "store")
    stack.delivery = Delivery(
        stack.store,
        stack.broker,
        stack.metrics,
        body_max_chars=4096,
        send_rate=1e6,
        send_burst=1_000_000,
        typing_rate=1e6,
        typing_burst=1_000_000,
        cache=MemoryCache(),
    )
    try:
        yield stack
    finally:
        await stack.store.close()


def lookups(stack: Stack) -> dict[str, int]:
    return dict(stack.metrics.hot.cache)


async def test_second_read_is_a_hit_and_matches_the_store(cached: Stack) -> None:
    alice, _ = await cached.user("alice"), await cached.user("bob")
    await cached.user("carol")
    await cached.delivery.send(alice, "bob", "1", "a")
    await cached.delivery.send(alice, "carol", "2", "b")
    first = await cached.delivery.conversations(alice, 50)
    second = await cached.delivery.conversations(alice, 50)
    assert first == second == await cached.store.conversations("alice", 50)
    assert lookups(cached) == {"hit": 1, "miss": 1, "error": 0}
    assert b"courier_cache_hit_ratio 0.5" in cached.metrics.render()


async def test_a_message_invalidates_both_sides(cached: Stack) -> None:
    alice, bob = await cached.user("alice"), await cached.user("bob")
    await cached.delivery.send(alice, "bob", "1", "a")
    await cached.delivery.conversations(alice, 50)
    await cached.delivery.conversations(bob, 50)
    await cached.delivery.send(bob, "alice", "2", "b")
    (conv,) = await cached.delivery.conversations(alice, 50)
    assert json.loads(conv.last)["body"] == "2" and conv.unread == 1
    (conv,) = await cached.delivery.conversations(bob, 50)
    assert json.loads(conv.last)["body"] == "2" and conv.unread == 1


async def test_a_read_marker_invalidates_the_readers_unread_count(cached: Stack) -> None:
    alice, bob = await cached.user("alice"), await cached.user("bob")
    await cached.delivery.send(alice, "bob", "1", "a")
    assert (await cached.delivery.conversations(bob, 50))[0].unread == 1
    await cached.delivery.read(bob, "alice", 1)
    assert (await cached.delivery.conversations(bob, 50))[0].unread == 0


async def test_first_history_page_comes_from_the_view(cached: Stack) -> None:
    alice, bob = await cached.user("alice"), await cached.user("bob")
    for i in range(20):
        await cached.delivery.send(alice, "bob", str(i), f"c{i}")
    await cached.delivery.conversations(bob, 50)  # fills the view
    hits = lookups(cached)["hit"]
    page, cursor = await cached.delivery.history(bob, "alice", None, 10)
    assert lookups(cached)["hit"] == hits + 1
    assert [json.loads(d)["body"] for _, d in page] == [str(i) for i in range(19, 9, -1)]
    assert cursor == page[-1][0]
    older, cursor = await cached.delivery.history(bob, "alice", cursor, 50)
    assert [json.loads(d)["body"] for _, d in older] == [str(i) for i in range(9, -1, -1)]
    assert cursor is None
    # Larger first pages than the view holds go to the store, with the same answer.
    page, cursor = await cached.delivery.history(bob, "alice", None, 20)
    assert len(page) == 20 and cursor is None


async def test_a_fill_that_raced_an_invalidation_is_refused() -> None:
    cache = MemoryCache()
    generation = await cache.generation("alice")
    cache.invalidate("alice")  # a message arrived while the view was being read
    await cache.fill("alice", generation, CachedView([], True, {}))
    assert await cache.get("alice") is None
    generation = await cache.generation("alice")
    await cache.fill("alice", generation, CachedView([], True, {}))
    assert await cache.get("alice") is not None


async def test_the_lru_keeps_at_most_max_users() -> None:
    cache = MemoryCache(max_users=2)
    for user in ("a", "b", "c"):
        await cache.fill(user, await cache.generation(user), CachedView([], True, {}))
    assert await cache.get("a") is None
    assert await cache.get("b") is not None and await cache.get("c") is not None
