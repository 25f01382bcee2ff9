"""Presence, on each store (PROTOCOL.md, "Presence"): contacts are told when a user comes
online and, after the grace period, goes offline; reconnecting within the grace period tells
nobody anything; blocked users are not told; GET /v1/presence answers for contacts only."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from courier.domain.errors import CourierError
from courier.ports import TYPING
from courier.service.blocks import Blocks
from courier.service.presence import Presence
from tests.service.conftest import Device, Stack

GRACE = 0.2


def presence(stack: Stack) -> Presence:
    p = Presence(
        stack.store, stack.broker, stack.metrics, local_count=stack.registry.count, grace_s=GRACE
    )
    stack.registry.presence = p
    return p


def frames(dev: Device) -> list[dict[str, Any]]:
    out = [json.loads(e.data) for e in dev.received if e.kind == TYPING]
    return [f for f in out if f["type"] == "presence"]


async def settle(p: Presence) -> None:
    await asyncio.sleep(0.01)  # the broker's hand-off, then the changes in flight
    await p.idle()


async def contacts(stack: Stack, *names: str) -> list[Any]:
    """Users who all have a 1:1 conversation with the first."""
    sessions = [await stack.user(n) for n in names]
    for other in sessions[1:]:
        await stack.delivery.send(other, names[0], "hi", f"hi-{other.username}")
    return sessions


async def test_contacts_hear_of_online_and_after_the_grace_period_offline(stack: Stack) -> None:
    alice, bob, carol = await contacts(stack, "alice", "bob", "carol")
    await stack.user("dave")  # no conversation with alice: told nothing
    p = presence(stack)
    bob_dev, carol_dev = stack.device(bob, "b"), stack.device(carol, "c")
    dave_dev = stack.device(
        await stack.accounts.authenticate(await stack.accounts.login("dave", "password1")), "d"
    )
    await settle(p)
    for d in (bob_dev, carol_dev):
        d.received.clear()
    phone = stack.device(alice, "phone")
    await settle(p)
    assert [(f["user"], f["online"]) for f in frames(bob_dev)] == [("alice", True)]
    assert [(f["user"], f["online"]) for f in frames(carol_dev)] == [("alice", True)]
    stack.registry.remove(phone)
    await asyncio.sleep(GRACE / 2)
    assert len(frames(bob_dev)) == 1  # still within the grace period
    await asyncio.sleep(GRACE)
    await settle(p)
    last = frames(bob_dev)[-1]
    assert (last["user"], last["online"]) == ("alice", False) and last["last_seen"] > 0
    assert frames(dave_dev) == []
    record = await stack.store.get_user("alice")
    assert record is not None and record.last_seen == last["last_seen"]


async def test_reconnecting_within_the_grace_period_tells_nobody(stack: Stack) -> None:
    alice, bob = await contacts(stack, "alice", "bob")
    p = presence(stack)
    bob_dev = stack.device(bob, "b")
    first = stack.device(alice, "a0")
    await settle(p)
    for k in range(20):  # a flapping connection
        stack.registry.remove(first)
        first = stack.device(alice, f"a{k + 1}")
    await asyncio.sleep(GRACE * 2)
    await settle(p)
    assert [f["online"] for f in frames(bob_dev)] == [True]
    assert p.changes == 2  # bob coming online (told to alice), alice coming online


async def test_a_blocker_is_not_told(stack: Stack) -> None:
    alice, bob = await contacts(stack, "alice", "bob")
    await Blocks(stack.store).block(bob, "alice")
    p = presence(stack)
    bob_dev = stack.device(bob, "b")
    stack.device(alice, "a")
    await settle(p)
    assert frames(bob_dev) == []
    (entry,) = await p.query(bob, ["alice"])
    assert (entry.online, entry.last_seen) == (None, None)


async def test_query_answers_for_contacts_only(stack: Stack) -> None:
    alice, bob = await contacts(stack, "alice", "bob")
    await stack.user("erin")
    p = presence(stack)
    assert [(e.user, e.online, e.last_seen) for e in await p.query(alice, ["bob", "erin"])] == [
        ("bob", False, None),  # a contact never seen: offline, no time
        ("erin", None, None),  # not a contact
    ]
    dev = stack.device(bob, "b")
    await settle(p)
    (entry,) = await p.query(alice, ["bob"])
    assert entry.online is True and entry.last_seen
    stack.registry.remove(dev)
    (entry,) = await p.query(alice, ["bob"])
    assert entry.online is True  # within the grace period
    await asyncio.sleep(GRACE * 1.5)
    await settle(p)
    (entry,) = await p.query(alice, ["bob"])
    assert entry.online is False and entry.last_seen
    assert [e.online for e in await p.query(alice, ["nobody!", "alice"])] == [None, None]


@pytest.mark.parametrize("count", [0, 101])
async def test_query_bounds(stack: Stack, count: int) -> None:
    alice = await stack.user("alice")
    with pytest.raises(CourierError):
        await presence(stack).query(alice, [f"u{i:03d}" for i in range(count)])
