"""Moving a logical shard to another server while two nodes keep sending through it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_shardmove import (  # noqa: E402
    APPENDED,
    MIRRORED,
    ShardMoveError,
    move_shard,
)
from courier.adapters.pg_store import PgStore  # noqa: E402
from courier.domain.ops import (  # noqa: E402
    AdvanceAck,
    AppendMessage,
    DeleteToken,
    MarkRead,
    PutToken,
    SendResult,
)
from courier.domain.shards import shard_of  # noqa: E402
from tests.cluster.pg.conftest import create_users, users_on  # noqa: E402

WINDOW = 8  # sends in flight per sender, like a client pipelining over one WebSocket
Sent = list[tuple[AppendMessage, SendResult]]


def token_in(shard: int, tag: str) -> bytes:
    """A token hash that lands in `shard`, so the move carries it."""
    return next(
        h for i in range(100_000) if shard_of(h := f"{tag}-{i}".encode().ljust(32, b".")) == shard
    )


async def pipeline(
    node: PgStore, me: str, peers: list[str], stop: asyncio.Event, warm: asyncio.Event, sent: Sent
) -> None:
    """Send to `peers` in turn with up to WINDOW sends outstanding, until told to stop."""
    pending: deque[tuple[AppendMessage, asyncio.Future[Any]]] = deque()
    i = 0
    while not stop.is_set() and i < 5000:
        op = AppendMessage(
            me, peers[i % len(peers)], f"{me}:{i}", f"{me}-{i}", 1000 + i, f"{me}#{i}"
        )
        pending.append((op, node.submit(op)))
        i += 1
        if len(pending) >= WINDOW:
            op, fut = pending.popleft()
            sent.append((op, await fut))
            if len(sent) >= 60:
                warm.set()
        if i % 8 == 0:
            await asyncio.sleep(0.002)
    while pending:
        op, fut = pending.popleft()
        sent.append((op, await fut))


async def reader(nodes: list[PgStore], user: str, peer: str, stop: asyncio.Event) -> int:
    """Acks and read markers of `user` through both nodes meanwhile."""
    rounds = 0
    while not stop.is_set():
        node = nodes[rounds % 2]
        head = await node.head(user)
        await node.submit(AdvanceAck(user, "phone", head))
        await node.submit(MarkRead(user, peer, head))
        rounds += 1
        await asyncio.sleep(0.01)
    return rounds


async def rows_of(dsn: str, shard: int) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            name: await conn.fetchval(f"SELECT count(*) FROM {name} WHERE shard = $1", shard)
            for name in (*APPENDED, *MIRRORED)
        }
    finally:
        await conn.close()


def messages(rows: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    return [json.loads(data) for _, data in rows]


async def test_a_shard_moves_under_pipelined_traffic_losing_and_doubling_nothing(
    dsns: list[str],
) -> None:
    nodes = [PgStore(dsns, map_refresh=60.0), PgStore(dsns, map_refresh=60.0)]
    idle = PgStore(dsns, map_refresh=60.0)  # never writes: only the notification tells it
    for node in (*nodes, idle):
        await node.open()
    try:
        (mover,) = users_on(nodes[0], 0, 1, "mov")
        shard = shard_of(mover)
        ann = [u for u in users_on(nodes[0], 0, 3, "ann") if shard_of(u) != shard][:2]
        bob = [u for u in users_on(nodes[0], 1, 2, "bob")]
        await create_users(nodes[0], mover, *ann, *bob)
        kept, revoked = token_in(shard, "kept"), token_in(shard, "revoked")
        await nodes[0].submit(PutToken(kept, mover, "phone", 1))
        await nodes[0].submit(PutToken(revoked, mover, "laptop", 1))

        # Same-server pairs become cross-server ones and the other way round.
        plan = {
            mover: (nodes[0], [ann[0], bob[0]]),
            ann[0]: (nodes[1], [mover, bob[1]]),
            bob[0]: (nodes[0], [mover, ann[1]]),
            ann[1]: (nodes[1], [mover]),
            bob[1]: (nodes[1], [ann[0], mover]),
        }
        stop, warm = asyncio.Event(), asyncio.Event()
        sent: dict[str, Sent] = {me: [] for me in plan}
        traffic = [
            asyncio.create_task(pipeline(node, me, peers, stop, warm, sent[me]))
            for me, (node, peers) in plan.items()
        ]
        acks = asyncio.create_task(reader(nodes, mover, ann[0], stop))
        await warm.wait()
        before = sum(map(len, sent.values()))
        revoke = nodes[1].submit(DeleteToken(revoked, mover, "laptop"))  # lands during the copy
        report = await move_shard(dsns, shard, 1, grace=0.5)
        await revoke
        during = sum(map(len, sent.values())) - before
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*traffic)
        rounds = await acks
        print(f"\nmove: {json.dumps(report.as_dict())}; sends during it: {during}")

        assert report.version == 2 and (report.source, report.target) == (0, 1)
        assert during > 0 and rounds > 0
        assert sum(map(len, sent.values())) > before + during, "traffic ran on after the move"

        # The map changed everywhere; the idle node learnt it from the notification alone.
        for _ in range(200):
            if idle.server_of(mover) == 1:
                break
            await asyncio.sleep(0.01)
        for node in (*nodes, idle):
            assert node.server_of(mover) == 1
            assert node.shard_map.version_of_shard(shard) == 2

        # The shard's rows live only on the target, which the fence keeps the old server from.
        assert set((await rows_of(dsns[0], shard)).values()) == {0}
        on_target = await rows_of(dsns[1], shard)
        assert on_target["timeline"] > 0 and on_target["dedupe"] > 0 and on_target["users"] == 1
        conn = await asyncpg.connect(dsns[0])
        try:
            frozen = await conn.fetchval("SELECT frozen FROM shard_fence WHERE shard = $1", shard)
        finally:
            await conn.close()
        assert frozen is True

        # Every acknowledged send exactly once in both timelines, seqs gap-free from 1, each
        # sender's order kept, and both nodes read the same timelines.
        everyone = sorted(plan)
        timelines = {u: await nodes[0].events_after(u, 0, 100_000) for u in everyone}
        for user in everyone:
            assert await nodes[1].events_after(user, 0, 100_000) == timelines[user]
            assert [seq for seq, _ in timelines[user]] == list(range(1, len(timelines[user]) + 1))
        for me, mine in sent.items():
            assert not any(result.duplicate for _, result in mine)
            own = messages(timelines[me])
            outgoing = [e for e in own if e["from"] == me]
            assert [e["client_id"] for e in outgoing] == [op.client_id for op, _ in mine]
            assert [e["seq"] for e in outgoing] == [result.seq for _, result in mine]
            for peer in {op.recipient for op, _ in mine}:
                theirs = [e["client_id"] for e in messages(timelines[peer]) if e["from"] == me]
                assert theirs == [op.client_id for op, _ in mine if op.recipient == peer]
        for user in everyone:
            counts = Counter(e["client_id"] for e in messages(timelines[user]))
            assert set(counts.values()) == {1}
            involved = sum(
                op.recipient == user or op.sender == user for s in sent.values() for op, _ in s
            )
            assert sum(counts.values()) == involved
        assert await nodes[0].ack_watermark(mover) <= await nodes[1].head(mover)

        # A retry of an acknowledged send after the move gets the original answer.
        for me in (mover, ann[0]):
            op, original = sent[me][0]
            retry = AppendMessage(op.sender, op.recipient, "edited", op.client_id, 9, "new-id")
            again = await nodes[1].submit(retry)
            assert again.duplicate
            assert (again.id, again.seq, again.ts) == (original.id, original.seq, original.ts)
        for user in everyone:  # and writes no second copy anywhere
            assert await nodes[0].events_after(user, 0, 100_000) == timelines[user]

        # Tokens moved, the one revoked during the copy stays revoked.
        for node in nodes:
            assert (await node.get_token(kept)) is not None
            assert await node.get_token(revoked) is None
            assert [s.id for s in await node.sessions(mover, 10)] == ["phone"]
    finally:
        for node in (*nodes, idle):
            await node.close()


async def test_moving_a_shard_back_reuses_the_old_server(dsns: list[str]) -> None:
    store = PgStore(dsns, map_refresh=60.0)
    await store.open()
    try:
        (user,) = users_on(store, 0, 1, "back")
        (peer,) = users_on(store, 1, 1, "peer")
        await create_users(store, user, peer)
        await store.submit(AppendMessage(user, peer, "one", "c1", 1, "i1"))
        shard = shard_of(user)
        there = await move_shard(dsns, shard, 1, grace=0)
        await store.submit(AppendMessage(user, peer, "two", "c2", 2, "i2"))
        back = await move_shard(dsns, shard, 0, grace=0)
        assert (there.version, back.version) == (2, 3)
        await store.submit(AppendMessage(peer, user, "three", "c3", 3, "i3"))
        assert store.server_of(user) == 0
        bodies = [e["body"] for e in messages(await store.events_after(user, 0, 10))]
        assert bodies == ["one", "two", "three"]
        assert set((await rows_of(dsns[1], shard)).values()) == {0}
        with pytest.raises(ShardMoveError, match="already on server 0"):
            await move_shard(dsns, shard, 0)
    finally:
        await store.close()


async def test_the_command_line_moves_a_shard_and_says_where_a_user_is(
    dsns: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from courier.cli import main

    store = PgStore(dsns)
    await store.open()
    try:
        (user,) = users_on(store, 1, 1, "cli")
        await create_users(store, user)
    finally:
        await store.close()
    monkeypatch.setenv("COURIER_POSTGRES_SERVERS", ",".join(dsns))
    shard = shard_of(user)

    assert await asyncio.to_thread(main, ["shard", "where", user]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "key": user,
        "shard": shard,
        "server": 1,
        "version": 1,
    }
    move = ["shard", "move", str(shard), "--to", "0", "--grace", "0"]
    assert await asyncio.to_thread(main, move) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["from"], summary["to"], summary["version"]) == (1, 0, 2)
    assert summary["rows"]["users"] == 1 and summary["drained"]["users"] == 1
    assert await asyncio.to_thread(main, move) == 1
    assert "already on server 0" in capsys.readouterr().err


async def test_a_node_that_missed_the_notification_still_writes_to_the_new_server(
    dsns: list[str],
) -> None:
    store = PgStore(dsns, map_refresh=60.0)
    await store.open()
    try:
        (user,) = users_on(store, 0, 1, "deaf")
        peer = next(p for p in users_on(store, 0, 5, "pal") if shard_of(p) != shard_of(user))
        await create_users(store, user, peer)
        await store.submit(AppendMessage(peer, user, "before", "c1", 1, "i1"))
        assert store._follower is not None
        await store._follower.stop()  # it hears no notification from now on
        await move_shard(dsns, shard_of(user), 1, grace=0)
        assert store.server_of(user) == 0, "its map is stale"

        result = await store.submit(AppendMessage(peer, user, "after", "c2", 2, "i2"))
        assert (result.seq, result.duplicate) == (2, False)
        assert store.server_of(user) == 1, "the fence made it reread the map"
        bodies = [e["body"] for e in messages(await store.events_after(user, 0, 10))]
        assert bodies == ["before", "after"]
        assert set((await rows_of(dsns[0], shard_of(user))).values()) == {0}
    finally:
        await store.close()
