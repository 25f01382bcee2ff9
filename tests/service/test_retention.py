"""Retention: events older than N days go, with everything that points at them."""

from __future__ import annotations

import json
import time

from courier.domain.ops import AppendMessage
from courier.service.retention import sweep_once
from tests.service.conftest import Stack

DAY_MS = 86_400_000


async def put(stack: Stack, sender: str, to: str, cid: str, age_days: float) -> int:
    ts = int(time.time() * 1000 - age_days * DAY_MS)
    result = await stack.store.submit(AppendMessage(sender, to, f"body {cid}", cid, ts, cid))
    seq: int = result.seq
    return seq


async def test_sweep_drops_old_events_and_keeps_recent_ones(stack: Stack) -> None:
    alice = await stack.user("alice")
    bob = await stack.user("bob")
    await stack.user("carol")
    await put(stack, "alice", "bob", "old-1", 40)
    await put(stack, "alice", "bob", "old-2", 31)
    await put(stack, "alice", "carol", "old-3", 35)  # a whole conversation that expires
    await put(stack, "alice", "bob", "new-1", 1)

    dropped = await sweep_once(stack.store, days=30, metrics=stack.metrics)
    assert dropped == 6  # three messages, each in two timelines

    bob_events = [json.loads(d) for _, d in await stack.store.events_after("bob", 0, 100)]
    assert [e["client_id"] for e in bob_events] == ["new-1"]
    assert bob_events[0]["seq"] == 3, "seqs are never reused"
    assert await stack.store.head("bob") == 3
    # The conversation list forgets conversations with nothing left in them.
    assert [c.peer for c in await stack.delivery.conversations(alice, 10)] == ["bob"]
    (conv,) = await stack.delivery.conversations(bob, 10)
    assert conv.unread == 3  # unread counts are running totals
    page, cursor = await stack.delivery.history(bob, "alice", None, 50)
    assert [json.loads(d)["client_id"] for _, d in page] == ["new-1"] and cursor is None
    # New messages keep numbering after the dropped ones.
    result = await stack.delivery.send(alice, "carol", "again", "old-3")
    assert not result.duplicate, "an expired client_id is forgotten with its message"
    assert result.seq == 5


async def test_sweep_with_nothing_to_drop_changes_nothing(stack: Stack) -> None:
    await stack.user("alice")
    await stack.user("bob")
    await put(stack, "alice", "bob", "fresh", 0)
    assert await sweep_once(stack.store, days=7) == 0
    assert await stack.store.head("bob") == 1
    assert len(await stack.store.events_after("bob", 0, 10)) == 1


async def test_sweep_drops_old_group_messages_and_keeps_the_group(stack: Stack) -> None:
    from courier.domain.ops import AppendGroupMessage, CreateGroup

    ann, ben = await stack.user("ann"), await stack.user("ben")
    gid = "G" + "e" * 32
    old = int(time.time() * 1000 - 40 * DAY_MS)
    await stack.store.submit(CreateGroup(gid, "g", "ann", ("ben",), old, 10))
    for i in range(2):
        await stack.store.submit(AppendGroupMessage("ann", gid, f"old{i}", f"o{i}", old, f"o{i}"))
    await stack.delivery.send(ben, None, "new", "n0", group=gid)

    assert await sweep_once(stack.store, days=30, metrics=stack.metrics) > 0
    for user in (ann, ben):
        events = [json.loads(d) for _, d in await stack.store.events_after(user.username, 0, 100)]
        assert [e.get("body") for e in events] == ["new"], user.username
        rows, _ = await stack.delivery.history(user, gid, None, 50)
        assert [json.loads(d).get("body") for _, d in rows] == ["new"]
        (conv,) = await stack.delivery.conversations(user, 10)
        assert conv.peer == gid
    # The group goes on: a new message reaches both, after the ones dropped.
    again = await stack.delivery.send(ann, None, "old0", "o0", group=gid)
    assert not again.duplicate  # the dropped message's dedupe key went with it
    assert [
        json.loads(d).get("body") for _, d in await stack.store.events_after("ben", 0, 100)
    ] == [
        "new",
        "old0",
    ]
