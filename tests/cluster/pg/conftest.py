"""Fixtures for the PostgreSQL store against two real servers (see servers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from courier.domain.ops import CreateUser
from tests.cluster.pg.servers import PgCluster, pg_cluster

if TYPE_CHECKING:
    from courier.adapters.pg_store import PgStore


@pytest.fixture
def cluster() -> PgCluster:
    return pg_cluster()


@pytest.fixture
async def dsns(cluster: PgCluster, request: pytest.FixtureRequest) -> list[str]:
    """Fresh databases for this test, one per server."""
    return await cluster.databases(request.node.nodeid)


@pytest.fixture
async def store(dsns: list[str]) -> AsyncIterator[PgStore]:
    from courier.adapters.pg_store import PgStore

    s = PgStore(dsns)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def users_on(store: PgStore, server: int, count: int, prefix: str = "user") -> list[str]:
    """The first `count` names `prefix`NNN whose shards sit on `server`."""
    names = (f"{prefix}{i:03d}" for i in range(10_000))
    found = [n for n in names if store.server_of(n) == server]
    return found[:count]


async def create_users(store: PgStore, *names: str) -> None:
    for name in names:
        assert await store.submit(CreateUser(name, "hash", 1))


async def at_schema(conn: Any, last: int) -> None:
    """An empty database brought to schema version `last` as that version left it, for a
    test of the upgrade from it."""
    from courier.adapters.pg_schema import MIGRATIONS

    await conn.execute(
        "CREATE TABLE schema_migrations ("
        " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, sql in MIGRATIONS:
        if version <= last:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
