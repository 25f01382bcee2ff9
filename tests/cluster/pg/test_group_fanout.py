"""Group fan-out on two real PostgreSQL servers: the durable record is completed once per
member by whichever node gets to it, in the group's order, whatever died in between."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_groups import PgGroups, Record  # noqa: E402
from courier.adapters.pg_store import PgStore  # noqa: E402
from courier.domain.ops import AppendGroupMessage, CreateGroup  # noqa: E402
from tests.cluster.pg.conftest import create_users, users_on  # noqa: E402

GID = "G" + "b" * 32


class Died(Exception):
    """The node stops right after the fan-out record is durable."""


async def group_on_both(store: PgStore) -> list[str]:
    members = users_on(store, 0, 3, "ann") + users_on(store, 1, 3, "bob")
    await create_users(store, *members)
    await store.submit(CreateGroup(GID, "g", members[0], tuple(members[1:]), 1, 100))
    return members


def messages(rows: list[tuple[int, bytes]]) -> list[str]:
    return [json.loads(e)["body"] for _, e in rows if json.loads(e)["type"] == "message"]


async def send_then_die(store: PgStore, n: int, sender: str) -> None:
    real = PgGroups._complete

    async def die(self: PgGroups, record: Record) -> dict[str, int]:
        raise Died

    PgGroups._complete = die  # type: ignore[method-assign]
    try:
        op = AppendGroupMessage(sender, GID, f"m{n}", f"c{n}", 1000 + n, f"id{n}")
        with pytest.raises(Died):
            await store.submit(op)
    finally:
        PgGroups._complete = real  # type: ignore[method-assign]


async def test_a_record_left_by_a_dead_node_is_completed_once_by_the_next(
    dsns: list[str],
) -> None:
    store = PgStore(dsns)
    await store.open()
    members = await group_on_both(store)
    await send_then_die(store, 1, members[1])
    for user in members:  # durable, not applied yet: nobody has it
        assert messages(await store.events_after(user, 0, 100)) == []
    await store.close()

    fresh = PgStore(dsns)
    await fresh.open()  # completes what it finds
    try:
        for user in members:
            rows = await fresh.events_after(user, 0, 100)
            assert messages(rows) == ["m1"], user
            assert [s for s, _ in rows] == list(range(1, len(rows) + 1))
        retry = AppendGroupMessage(members[1], GID, "m1", "c1", 9, "other")
        again = await fresh.submit(retry)
        assert again.duplicate
        for user in members:
            assert messages(await fresh.events_after(user, 0, 100)) == ["m1"]
    finally:
        await fresh.close()


async def test_two_nodes_completing_at_once_give_one_copy_each(dsns: list[str]) -> None:
    a, b = PgStore(dsns), PgStore(dsns)
    await a.open()
    await b.open()
    try:
        members = await group_on_both(a)
        for n in range(3):
            await send_then_die(a, n, members[n % 2])
        await asyncio.gather(
            *(s.groups.complete_pending(server, age_ms=0) for s in (a, b) for server in (0, 1))
        )
        for user in members:
            assert messages(await a.events_after(user, 0, 100)) == ["m0", "m1", "m2"], user
    finally:
        await a.close()
        await b.close()


async def test_a_later_record_waits_for_the_earlier_ones_of_its_group(store: PgStore) -> None:
    members = await group_on_both(store)
    await send_then_die(store, 1, members[0])
    # The next message is completed at once: the earlier pending record goes first.
    result: Any = await store.submit(AppendGroupMessage(members[3], GID, "m2", "c2", 1002, "i2"))
    assert not result.duplicate
    for user in members:
        assert messages(await store.events_after(user, 0, 100)) == ["m1", "m2"], user
    seqs = dict(zip(result.fanout.members, result.fanout.seqs, strict=True))
    for user in members:
        rows = await store.events_after(user, 0, 100)
        assert rows[-1][0] == seqs[user]


async def test_a_record_completed_later_is_handed_over_to_be_pushed(dsns: list[str]) -> None:
    store = PgStore(dsns)
    await store.open()
    members = await group_on_both(store)
    await send_then_die(store, 7, members[2])
    await store.close()

    handed: list[Any] = []
    fresh = PgStore(dsns)
    fresh.set_fanout_sink(handed.append)  # as the delivery service does, before open
    await fresh.open()
    try:
        [fanout] = handed
        assert fanout.group == GID and set(fanout.members) == set(members)
        for user, seq in zip(fanout.members, fanout.seqs, strict=True):
            rows = await fresh.events_after(user, seq - 1, 1)
            assert rows and json.loads(rows[0][1])["body"] == "m7"
    finally:
        await fresh.close()
