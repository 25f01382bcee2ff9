"""How group messages lie in the cluster store: the body once per server, each member's
timeline row naming it, a watermark per member instead of a key per member per message, and
the bodies following a shard that moves."""

from __future__ import annotations

import json
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_groups import PgGroups, Record  # noqa: E402
from courier.adapters.pg_shardmove import move_shard  # noqa: E402
from courier.adapters.pg_store import PgStore  # noqa: E402
from courier.domain.ops import AppendGroupMessage, CreateGroup  # noqa: E402
from courier.domain.shards import shard_of  # noqa: E402
from tests.cluster.pg.conftest import at_schema, create_users, users_on  # noqa: E402

GID = "G" + "c" * 32


async def on_both(store: PgStore) -> list[str]:
    members = users_on(store, 0, 3, "amy") + users_on(store, 1, 3, "ben")
    await create_users(store, *members)
    await store.submit(CreateGroup(GID, "g", members[0], tuple(members[1:]), 1, 100))
    return members


async def send(store: PgStore, sender: str, n: int) -> Any:
    return await store.submit(AppendGroupMessage(sender, GID, f"m{n}", f"c{n}", 100 + n, f"i{n}"))


def bodies(rows: list[tuple[int, bytes]]) -> list[str]:
    return [json.loads(e)["body"] for _, e in rows if json.loads(e)["type"] == "message"]


async def fetch(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def test_a_group_message_is_stored_once_per_server(dsns: list[str], store: PgStore) -> None:
    members = await on_both(store)
    for n in range(3):
        await send(store, members[n], n)
    for dsn in dsns:
        # The creation event and three messages: one body each on each server.
        assert await fetch(dsn, "SELECT count(*) FROM group_bodies WHERE gid = $1", GID) == 4
        assert (
            await fetch(dsn, "SELECT count(*) FROM timeline WHERE peer = $1 AND event IS NULL", GID)
            == 3 * 4
        )
        assert await fetch(dsn, "SELECT count(*) FROM timeline WHERE event IS NOT NULL") == 0
        # No per-member claim rows: the watermark is the member's conversation row.
        assert await fetch(dsn, "SELECT count(*) FROM dedupe WHERE sender = $1", GID) == 0
        assert await fetch(
            dsn, "SELECT array_agg(DISTINCT gseq) FROM conversations WHERE peer = $1", GID
        ) == [4]
    for user in members:
        rows = await store.events_after(user, 0, 100)
        assert [s for s, _ in rows] == [1, 2, 3, 4]
        assert [json.loads(e)["seq"] for _, e in rows] == [1, 2, 3, 4]
        assert bodies(rows) == ["m0", "m1", "m2"]
        assert bodies(await store.history(user, GID, None, 2)) == ["m2", "m1"]
        [conversation] = await store.conversations(user, 10)
        assert conversation.peer == GID and json.loads(conversation.last)["body"] == "m2"
    # A retried send is answered from the author's own row, body and all.
    again = await send(store, members[1], 1)
    assert again.duplicate and again.seq == 3


async def test_completing_a_record_again_adds_nothing(
    store: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = await on_both(store)
    real = PgGroups._complete
    seen: list[Record] = []

    async def spy(self: PgGroups, record: Record) -> dict[str, int]:
        seen.append(record)
        return await real(self, record)

    monkeypatch.setattr(PgGroups, "_complete", spy)
    first = await send(store, members[1], 1)
    # As a second node would, after the first: the same seqs, and no second copy.
    assert await real(store.groups, seen[-1]) == dict(
        zip(first.fanout.members, first.fanout.seqs, strict=True)
    )
    for user in members:
        assert bodies(await store.events_after(user, 0, 100)) == ["m1"]


async def test_a_moved_shard_brings_the_bodies_its_members_need(dsns: list[str]) -> None:
    store = PgStore(dsns)
    await store.open()
    try:
        members = users_on(store, 0, 4, "cat")
        await create_users(store, *members)
        await store.submit(CreateGroup(GID, "g", members[0], tuple(members[1:]), 1, 100))
        for n in range(3):
            await send(store, members[n], n)
        moving = members[1]
        report = await move_shard(dsns, shard_of(moving), 1, grace=0)
        assert report.copied.get("group_bodies") == 4  # the creation event and 3 messages
    finally:
        await store.close()
    fresh = PgStore(dsns)
    await fresh.open()
    try:
        assert fresh.server_of(moving) == 1
        assert bodies(await fresh.events_after(moving, 0, 100)) == ["m0", "m1", "m2"]
        await send(fresh, members[0], 3)
        for user in members:
            rows = await fresh.events_after(user, 0, 100)
            assert bodies(rows) == ["m0", "m1", "m2", "m3"], user
            assert [s for s, _ in rows] == list(range(1, 6))
        retry = await send(fresh, moving, 1)
        assert retry.duplicate and retry.seq == 3
    finally:
        await fresh.close()


async def test_the_claims_of_schema_4_become_watermarks(dsns: list[str]) -> None:
    """A server at schema 4 that holds per-member claim keys opens under this version: each
    member's newest claim becomes their watermark and the keys go."""
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await at_schema(conn, 4)
            shard = shard_of("amy")
            await conn.execute(
                "INSERT INTO conversations (shard, owner, peer, last_seq, in_total, read_seq,"
                " read_ordinal) VALUES ($1, 'amy', $2, 7, 5, 0, 0)",
                shard,
                GID,
            )
            await conn.executemany(
                "INSERT INTO dedupe (shard, owner, sender, client_id, seq)"
                " VALUES ($1, $2, $3, $4, $5)",
                [
                    (shard, "amy", GID, "g3", 5),
                    (shard, "amy", GID, "g9", 7),
                    (shard, "amy", "amy", "mine", 6),
                ],
            )
        finally:
            await conn.close()
    store = PgStore(dsns)
    await store.open()
    await store.close()
    for dsn in dsns:
        assert await fetch(dsn, "SELECT gseq FROM conversations WHERE peer = $1", GID) == 9
        assert await fetch(dsn, "SELECT count(*) FROM dedupe WHERE sender = $1", GID) == 0
        assert await fetch(dsn, "SELECT count(*) FROM dedupe WHERE sender = 'amy'") == 1


async def test_members_on_the_authors_server_know_the_authors_seq(store: PgStore) -> None:
    """Their rows carry it like the other servers' rows do, so their acks give receipts."""
    members = users_on(store, 0, 3, "dan")
    await create_users(store, *members)
    await store.submit(CreateGroup(GID, "g", members[0], tuple(members[1:]), 1, 100))
    sent = await send(store, members[0], 1)
    for reader in members[1:]:
        assert await store.incoming_summary(reader, 0, 2) == {(members[0], GID): sent.seq}
