"""Sends whose two timelines sit on different servers: ordered, idempotent, crash-safe."""

from __future__ import annotations

import asyncio
import json

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_store import PgStore  # noqa: E402
from courier.domain.ops import AdvanceAck, AppendMessage, MarkRead  # noqa: E402
from tests.cluster.pg.conftest import create_users, users_on  # noqa: E402


async def pair(store: PgStore) -> tuple[str, str]:
    """A sender on server 1 and a recipient on server 0."""
    (sender,) = users_on(store, 1, 1, "ann")
    (recipient,) = users_on(store, 0, 1, "bob")
    await create_users(store, sender, recipient)
    return sender, recipient


async def count(dsn: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval(sql, *args)
        return value
    finally:
        await conn.close()


def bodies(rows: list[tuple[int, bytes]]) -> list[str]:
    return [json.loads(data)["body"] for _, data in rows]


async def test_each_copy_is_stored_once_on_its_owners_server(store: PgStore) -> None:
    sender, recipient = await pair(store)
    result = await store.submit(AppendMessage(sender, recipient, "hi", "c1", 1000, "id1"))
    assert not result.duplicate and result.seq == 1
    assert [(p.user, p.seq) for p in result.published] == [(recipient, 1), (sender, 1)]
    again = await store.submit(AppendMessage(sender, recipient, "hi", "c1", 2000, "id2"))
    assert again.duplicate and (again.id, again.seq, again.ts) == ("id1", 1, 1000)

    dsns = store._dsns
    for server, owner in ((0, recipient), (1, sender)):
        sql = "SELECT count(*) FROM timeline WHERE owner = $1"
        assert await count(dsns[server], sql, owner) == 1
        assert await count(dsns[1 - server], sql, owner) == 0
    dedupe = "SELECT count(*) FROM dedupe WHERE owner = $1 AND sender = $2 AND client_id = 'c1'"
    assert await count(dsns[0], dedupe, recipient, sender) == 1
    assert await count(dsns[1], dedupe, sender, sender) == 1
    ((_, incoming),) = await store.events_after(recipient, 0, 10)
    ((_, outgoing),) = await store.events_after(sender, 0, 10)
    assert json.loads(incoming) == json.loads(outgoing) | {"seq": 1}


async def test_a_crash_between_the_halves_is_completed_once_by_the_retry(
    dsns: list[str],
) -> None:
    first = PgStore(dsns)
    await first.open()
    sender, recipient = await pair(first)
    original = AppendMessage(sender, recipient, "hi", "c1", 1000, "id1")
    half = await first.submit_recipient_side(original)
    assert half.fresh and half.seq == 1
    assert await first.head(sender) == 0, "the node dies before the sender's half"
    await first.close()

    second = PgStore(dsns)
    await second.open()
    try:
        retry = AppendMessage(sender, recipient, "hi (edited)", "c1", 5000, "id2")
        result = await second.submit(retry)
        assert not result.duplicate, "the sender's copy is written now"
        assert (result.id, result.seq, result.ts) == ("id1", 1, 1000), "the original answer"
        incoming, outgoing = result.published
        assert (incoming.user, incoming.seq, incoming.data) == (recipient, 1, half.event)
        assert bodies(await second.events_after(recipient, 0, 10)) == ["hi"]
        assert bodies(await second.events_after(sender, 0, 10)) == ["hi"]
        assert json.loads(outgoing.data)["id"] == "id1"
        again = await second.submit(retry)
        assert again.duplicate and again.seq == 1
        assert await second.head(recipient) == 1 and await second.head(sender) == 1
    finally:
        await second.close()


async def test_receipts_find_the_senders_seq_on_the_other_server(store: PgStore) -> None:
    sender, recipient = await pair(store)
    (other,) = users_on(store, 1, 1, "cat")
    await create_users(store, other)
    await store.submit(AppendMessage(sender, other, "x", "o1", 1, "i0"))  # sender seq 1
    for i in (1, 2):
        await store.submit(AppendMessage(sender, recipient, f"m{i}", f"c{i}", 1, f"i{i}"))
    assert await store.incoming_summary(recipient, 0, 2) == {(sender, ""): 3}
    assert await store.incoming_summary(recipient, 0, 1) == {(sender, ""): 2}
    assert await store.submit(MarkRead(recipient, sender, 1)) == 2
    assert (await store.submit(AdvanceAck(recipient, "phone", 2))).after == 2
    # A recipient half whose sender half never came yields no receipt until it does.
    op = AppendMessage(sender, recipient, "late", "c3", 1, "i3")
    await store.submit_recipient_side(op)
    assert await store.incoming_summary(recipient, 2, 3) == {}
    assert await store.submit(MarkRead(recipient, sender, 3)) == 0
    await store.submit(op)
    assert await store.incoming_summary(recipient, 2, 3) == {(sender, ""): 4}
    assert await store.submit(MarkRead(recipient, sender, 3)) == 4


async def test_pipelined_sends_keep_submission_order_on_every_timeline(store: PgStore) -> None:
    sender, far = await pair(store)
    (near,) = users_on(store, 1, 1, "cat")
    await create_users(store, near)
    plan = [(far if i % 3 else near, f"m{i}") for i in range(40)]
    futures = [
        store.submit(AppendMessage(sender, to, body, body, 1, f"id{i}"))
        for i, (to, body) in enumerate(plan)
    ]
    results = await asyncio.gather(*futures)
    assert [r.seq for r in results] == list(range(1, 41))
    assert bodies(await store.events_after(sender, 0, 100)) == [b for _, b in plan]
    assert bodies(await store.events_after(far, 0, 100)) == [b for t, b in plan if t == far]
    assert bodies(await store.events_after(near, 0, 100)) == [b for t, b in plan if t == near]


async def test_a_retry_racing_its_original_is_the_duplicate(store: PgStore) -> None:
    sender, recipient = await pair(store)
    futures = [
        store.submit(AppendMessage(sender, recipient, "hi", f"c{i % 2}", 1, f"id{i}"))
        for i in range(6)
    ]
    results = await asyncio.gather(*futures)
    assert [r.duplicate for r in results] == [False, False, True, True, True, True]
    assert [r.seq for r in results] == [1, 2, 1, 2, 1, 2]
    assert await store.head(recipient) == 2 and await store.head(sender) == 2


async def test_two_nodes_writing_to_one_timeline_allocate_gap_free_seqs(
    dsns: list[str],
) -> None:
    nodes = [PgStore(dsns), PgStore(dsns)]
    for node in nodes:
        await node.open()
    try:
        (recipient,) = users_on(nodes[0], 0, 1, "bob")
        senders = users_on(nodes[0], 0, 2, "ann") + users_on(nodes[0], 1, 2, "ann")
        await create_users(nodes[0], recipient, *senders)
        # Sender k talks to node k % 2; both nodes write the recipient's timeline at once.
        plan = [(senders[i % 4], i) for i in range(120)]
        futures = [
            nodes[i % 2].submit(AppendMessage(s, recipient, f"{s}-{i}", f"c{i}", 1, "x"))
            for s, i in plan
        ]
        await asyncio.gather(*futures)
        rows = await nodes[1].events_after(recipient, 0, 1000)
        assert [seq for seq, _ in rows] == list(range(1, 121))
        assert sorted(bodies(rows)) == sorted(f"{senders[i % 4]}-{i}" for i in range(120))
        for sender in senders:  # each sender's order survives
            mine = [b for b in bodies(rows) if b.startswith(f"{sender}-")]
            assert mine == sorted(mine, key=lambda b: int(b.rsplit("-", 1)[1]))
    finally:
        for node in nodes:
            await node.close()
