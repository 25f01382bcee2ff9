"""Migrations and the shard map, on real servers."""

from __future__ import annotations

import asyncio

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_schema import MIGRATIONS, migrate  # noqa: E402
from courier.adapters.pg_shardmap import ShardMapError  # noqa: E402
from courier.adapters.pg_store import PgStore  # noqa: E402
from courier.domain.shards import LOGICAL_SHARDS, shard_of  # noqa: E402


async def test_migrations_apply_once_and_then_are_a_no_op(dsns: list[str]) -> None:
    conn = await asyncpg.connect(dsns[0])
    try:
        assert await migrate(conn) == [v for v, _ in MIGRATIONS]
        assert await migrate(conn) == []
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in versions] == [v for v, _ in MIGRATIONS]
    finally:
        await conn.close()


async def test_nodes_starting_together_apply_each_migration_exactly_once(
    dsns: list[str],
) -> None:
    conns = [await asyncpg.connect(dsns[1]) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(map(len, applied)) == [0, 0, 0, len(MIGRATIONS)]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)
    finally:
        for c in conns:
            await c.close()


async def test_first_start_lays_shards_round_robin_in_the_directory(store: PgStore) -> None:
    directory = await asyncpg.connect(store._dsns[0])
    try:
        rows = await directory.fetch("SELECT shard, server, version FROM shard_map ORDER BY 1")
    finally:
        await directory.close()
    assert len(rows) == LOGICAL_SHARDS
    assert all(r["server"] == r["shard"] % 2 and r["version"] == 1 for r in rows)
    assert store.shard_map.version == 1
    assert store.server_of("alice") == shard_of("alice") % 2
    assert len(store.shard_map.shards_on(0)) == len(store.shard_map.shards_on(1)) == 500


async def test_a_moved_shard_is_seen_at_the_next_open(dsns: list[str]) -> None:
    first = PgStore(dsns)
    await first.open()
    await first.close()
    directory = await asyncpg.connect(dsns[0])
    try:
        shard = shard_of("alice")
        await directory.execute(
            "UPDATE shard_map SET server = 1 - server, version = version + 1 WHERE shard = $1",
            shard,
        )
    finally:
        await directory.close()
    second = PgStore(dsns)
    await second.open()
    try:
        assert second.server_of("alice") == 1 - shard % 2
        assert second.shard_map.version == 2
    finally:
        await second.close()


async def test_a_map_naming_a_missing_server_refuses_to_open(dsns: list[str]) -> None:
    first = PgStore(dsns)
    await first.open()
    await first.close()
    with pytest.raises(ShardMapError):
        await PgStore(dsns[:1]).open()
