"""Tokens and sessions on real servers: a token's row on its hash's shard, its session row on
its user's, and the two kept in step."""

from __future__ import annotations

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_store import PgStore  # noqa: E402
from courier.domain.ops import DeleteToken, PutToken, TouchToken  # noqa: E402
from courier.domain.shards import shard_of  # noqa: E402
from courier.service.accounts import hash_token  # noqa: E402
from tests.cluster.pg.conftest import create_users, users_on  # noqa: E402


def token_on(store: PgStore, server: int, tag: str) -> bytes:
    """A token hash whose row the map places on `server`."""
    for i in range(10_000):
        token_hash = hash_token(f"{tag} {i}")
        if store.server_of(token_hash) == server:
            return token_hash
    raise AssertionError("no such token")


async def count(dsn: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval(sql, *args)
        return value
    finally:
        await conn.close()


async def test_a_login_writes_the_token_on_its_server_and_the_session_on_the_users(
    store: PgStore,
) -> None:
    (user,) = users_on(store, 0, 1, "sess")
    await create_users(store, user)
    token_hash = token_on(store, 1, "token")
    await store.submit(PutToken(token_hash, user, token_hash[:8].hex(), 5, "agent"))

    dsns = store.servers
    tokens = "SELECT count(*) FROM tokens WHERE token_hash = $1"
    sessions = "SELECT count(*) FROM sessions WHERE owner = $1 AND shard = $2"
    assert [await count(d, tokens, token_hash) for d in dsns] == [0, 1]
    assert [await count(d, sessions, user, shard_of(user)) for d in dsns] == [1, 0]

    await store.submit(TouchToken(token_hash, user, token_hash[:8].hex(), 7))
    record = await store.get_token(token_hash)
    (listed,) = await store.sessions(user, 10)
    assert record is not None and record.last_used == listed.last_used == 7
    assert (listed.created, listed.user_agent) == (5, "agent")

    await store.submit(DeleteToken(token_hash, user, token_hash[:8].hex()))
    assert [await count(d, tokens, token_hash) for d in dsns] == [0, 0]
    assert await store.sessions(user, 10) == []


async def test_ending_again_completes_an_end_cut_short_between_its_halves(
    store: PgStore,
) -> None:
    """The token row went (the first half), then the node stopped: the session is still
    listed, and ending it again removes it."""
    (user,) = users_on(store, 1, 1, "half")
    await create_users(store, user)
    token_hash = token_on(store, 0, "half")
    device = token_hash[:8].hex()
    await store.submit(PutToken(token_hash, user, device, 5))
    conn = await asyncpg.connect(store.servers[0])
    try:
        await conn.execute("DELETE FROM tokens WHERE token_hash = $1", token_hash)
    finally:
        await conn.close()
    assert await store.get_token(token_hash) is None
    found = await store.get_session(user, device)
    assert found is not None and found.token_hash == token_hash

    await store.submit(DeleteToken(token_hash, user, device))
    assert await store.get_session(user, device) is None
    assert await store.sessions(user, 10) == []
