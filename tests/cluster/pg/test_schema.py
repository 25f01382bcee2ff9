"""Migrations and the shard map, on real servers."""

from __future__ import annotations

import asyncio

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_schema import MIGRATIONS, migrate  # noqa: E402
from courier.adapters.pg_shardmap import ShardMapError  # noqa: E402
from courier.adapters.pg_store import PgStore  # noqa: E402
from courier.domain.shards import LOGICAL_SHARDS, shard_of  # noqa: E402
from tests.cluster.pg.conftest import at_schema  # noqa: E402


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


async def test_a_deployment_of_the_previous_version_is_upgraded_at_open(dsns: list[str]) -> None:
    """Servers at schema 2, holding tokens written by that version, open under this one: the
    tables gain their columns, and every old token keeps working and is listed."""
    from courier.domain.ops import CreateUser
    from courier.service.accounts import hash_token

    tokens = {f"old token {i}": hash_token(f"old token {i}") for i in range(6)}
    for server, dsn in enumerate(dsns):
        conn = await asyncpg.connect(dsn)
        try:
            await at_schema(conn, 2)
            for token_hash in tokens.values():
                if shard_of(token_hash) % 2 == server:  # the first start's round-robin map
                    await conn.execute(
                        "INSERT INTO tokens (token_hash, shard, username, device, created)"
                        " VALUES ($1, $2, 'alice', $3, 1000)",
                        token_hash,
                        shard_of(token_hash),
                        token_hash[:8].hex(),
                    )
        finally:
            await conn.close()

    store = PgStore(dsns)
    await store.open()
    try:
        assert await store.submit(CreateUser("alice", "hash", 1))
        listed = await store.sessions("alice", 100)
        assert sorted(s.token_hash for s in listed) == sorted(tokens.values())
        for session in listed:
            assert session.created == 1000 < session.last_used and session.user_agent == ""
            record = await store.get_token(session.token_hash)
            assert record is not None and record.username == "alice"
            assert record.last_used == session.last_used
        for dsn in dsns:
            conn = await asyncpg.connect(dsn)
            try:
                assert (
                    await conn.fetchval("SELECT max(version) FROM schema_migrations")
                    == MIGRATIONS[-1][0]
                )
                assert (
                    await conn.fetchval("SELECT count(*) FROM tokens WHERE last_used IS NULL") == 0
                )
            finally:
                await conn.close()
    finally:
        await store.close()


async def test_users_of_an_older_schema_are_found_by_name_after_the_upgrade(
    dsns: list[str],
) -> None:
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await at_schema(conn, 5)
            await conn.execute(
                "INSERT INTO users (username, shard, password_hash, created)"
                " VALUES ('alice', $1, 'h', 1), ('alfred', $2, 'h', 1)",
                shard_of("alice"),
                shard_of("alfred"),
            )
        finally:
            await conn.close()
    store = PgStore(dsns)
    await store.open()
    try:
        found = await store.search_users("al", 10)
        # Both servers had both rows (the test wrote them everywhere): each user once.
        assert [(u.username, u.display_name) for u in found] == [("alfred", ""), ("alice", "")]
    finally:
        await store.close()
