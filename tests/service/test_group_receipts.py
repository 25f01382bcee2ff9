"""Delivered and read receipts of group messages, at the edges of runs (found by the group
state machine)."""

from __future__ import annotations

import json

from courier.service.groups import Groups
from tests.service.conftest import Stack


def receipts(rows: list[tuple[int, bytes]]) -> list[tuple[str, str, int]]:
    events = [json.loads(data) for _, data in rows]
    return [(e["status"], e["peer"], e["up_to"]) for e in events if e["type"] == "receipt"]


async def test_an_ack_inside_a_closed_run_emits_delivered_receipts(stack: Stack) -> None:
    """An ack whose range starts inside a run of group messages (the run began at or before
    the previous ack, and a 1:1 message closed it) still names the run's authors."""
    ann, ben, cat = await stack.user("ann"), await stack.user("ben"), await stack.user("cat")
    group = await Groups(stack.store, stack.delivery, max_members=10).create(ann, "g", ["ben"])
    await stack.delivery.send(ann, None, "first", "a1", group=group.id)  # ann: run at 2
    sent = await stack.delivery.send(ben, None, "second", "b1", group=group.id)  # ann: 3
    await stack.delivery.send(cat, "ann", "hi", "c1")  # ann: 4, closes the run
    await stack.delivery.ack(ann, 2)  # covers ann's own message only
    await stack.delivery.ack(ann, 3)  # starts inside the run: ben's message
    assert receipts(await stack.store.events_after("ben", 0, 100)) == [
        ("delivered", "ann", sent.seq)
    ]
