"""Blocking, on each store (PROTOCOL.md, "Blocking"): a blocked user's 1:1 sends are
answered as usual and stored in the sender's timeline only; the blocker gets no message,
receipt or typing from them; groups are not affected."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from courier.domain.errors import CourierError
from courier.ports import TYPING
from courier.service.blocks import Blocks
from courier.service.groups import Groups
from tests.service.conftest import Stack, build_stack

# Senders whose shards sit on both servers of the PostgreSQL store (so that sends between
# servers and within one are both covered), whatever the hash.
SENDERS = ["bob", "carol", "dave", "erin", "frank", "gina"]


async def timeline(stack: Stack, user: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for _seq, raw in await stack.store.events_after(user, 0, 1000)]


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["body"] for e in events if e["type"] == "message"]


async def test_a_blocked_senders_messages_stay_in_their_own_timeline(stack: Stack) -> None:
    alice = await stack.user("alice")
    senders = [await stack.user(name) for name in SENDERS]
    inbox = stack.device(alice, "a")
    blocks = Blocks(stack.store)
    for s in senders:
        await blocks.block(alice, s.username)
    assert await blocks.list(alice) == sorted(SENDERS)
    for s in senders:
        result = await stack.delivery.send(s, "alice", f"from {s.username}", "c1")
        assert not result.duplicate and result.seq == 1  # answered as usual
        again = await stack.delivery.send(s, "alice", f"from {s.username}", "c1")
        assert again.duplicate and again.seq == 1
        mine = await timeline(stack, s.username)
        assert bodies(mine) == [f"from {s.username}"] and mine[0]["to"] == "alice"
        (conv,) = await stack.delivery.conversations(s, 10)
        assert conv.peer == "alice"
    assert await timeline(stack, "alice") == []
    assert inbox.received == []
    assert await stack.delivery.conversations(alice, 10) == []


async def test_unblocking_lets_new_messages_through(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    blocks = Blocks(stack.store)
    await blocks.block(alice, "bob")
    await blocks.block(alice, "bob")  # idempotent
    await stack.delivery.send(bob, "alice", "while blocked", "c1")
    await blocks.unblock(alice, "bob")
    await blocks.unblock(alice, "bob")
    assert await blocks.list(alice) == []
    await stack.delivery.send(bob, "alice", "after", "c2")
    assert bodies(await timeline(stack, "alice")) == ["after"]
    assert bodies(await timeline(stack, "bob")) == ["while blocked", "after"]


async def test_the_blocker_gets_no_receipts_or_typing_from_the_blocked(stack: Stack) -> None:
    alice = await stack.user("alice")
    senders = [await stack.user(name) for name in SENDERS]
    alice_dev = stack.device(alice, "a")
    for s in senders:
        await stack.delivery.send(alice, s.username, "hi", f"to-{s.username}")
        await Blocks(stack.store).block(alice, s.username)
    alice_dev.received.clear()
    for s in senders:
        await stack.delivery.ack(s, 1)
        await stack.delivery.read(s, "alice", 1)
        await stack.delivery.typing(s, "alice")  # no error: the blocked are not told
    assert [e["type"] for e in await timeline(stack, "alice")] == ["message"] * len(SENDERS)
    assert alice_dev.received == []
    # The blocker still sends and types to them.
    await stack.delivery.typing(alice, "bob")


async def test_the_blocked_still_gets_receipts_and_typing_from_the_blocker(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    await stack.delivery.send(bob, "alice", "before the block", "c1")
    await Blocks(stack.store).block(alice, "bob")
    bob_dev = stack.device(bob, "b")
    await stack.delivery.read(alice, "bob", 1)
    await stack.delivery.typing(alice, "bob")
    types = [e["type"] for e in await timeline(stack, "bob")]
    assert types == ["message", "receipt"]
    assert [e.kind for e in bob_dev.received][-1] == TYPING


async def test_groups_are_not_affected(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    group = await Groups(stack.store, stack.delivery, max_members=10).create(alice, "g", ["bob"])
    await Blocks(stack.store).block(alice, "bob")
    await stack.delivery.send(bob, None, "in the group", "g1", group=group.id)
    assert bodies(await timeline(stack, "alice")) == ["in the group"]


@pytest.mark.parametrize(("name", "code"), [("alice", "bad_request"), ("nobody1", "unknown_user")])
async def test_blocking_yourself_or_nobody_is_refused(stack: Stack, name: str, code: str) -> None:
    alice = await stack.user("alice")
    with pytest.raises(CourierError) as err:
        await Blocks(stack.store).block(alice, name)
    assert err.value.code == code


# ---- the rule under any interleaving ---------------------------------------------------------
Step = tuple[str, int, int]  # ("send", sender, recipient) | ("block"/"unblock", owner, target)


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["send", "send", "send", "block", "unblock"]),
            st.integers(0, 2),
            st.integers(0, 2),
        ),
        max_size=30,
    ),
)
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_interleaving_of_sends_and_blocks(
    steps: list[Step], store_kind: str, tmp_path_factory: Any
) -> None:
    """Every send is in its sender's timeline; it is in its recipient's exactly when the
    recipient did not block the sender at the time; both timelines stay gap-free and in send
    order, also with sends pipelined into one batch."""

    async def run() -> None:
        stack = await build_stack(tmp_path_factory.mktemp("s"), store_kind)
        try:
            names = ["ann", "ben", "cat"]
            sessions = [await stack.user(n) for n in names]
            blocks = Blocks(stack.store, rate=1e6, burst=10**6)
            blocked: set[tuple[int, int]] = set()
            want_in: dict[int, list[str]] = {0: [], 1: [], 2: []}
            want_out: dict[int, list[str]] = {0: [], 1: [], 2: []}
            pending: list[asyncio.Future[Any]] = []  # sends pipelined until the next block
            for k, (kind, a, b) in enumerate(steps):
                if a == b:
                    continue
                if kind == "send":
                    text = f"m{k}"
                    pending.append(stack.delivery.send(sessions[a], names[b], text, f"c{k}"))
                    want_out[a].append(text)
                    if (b, a) not in blocked:
                        want_in[b].append(text)
                    continue
                await asyncio.gather(*pending)
                pending.clear()
                if kind == "block":
                    await blocks.block(sessions[a], names[b])
                    blocked.add((a, b))
                else:
                    await blocks.unblock(sessions[a], names[b])
                    blocked.discard((a, b))
            await asyncio.gather(*pending)
            for i, name in enumerate(names):
                events = await timeline(stack, name)
                assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
                got_in = [e["body"] for e in events if e["type"] == "message" and e["to"] == name]
                got_out = [
                    e["body"] for e in events if e["type"] == "message" and e["from"] == name
                ]
                assert got_in == want_in[i] and got_out == want_out[i]
        finally:
            await stack.store.close()

    asyncio.run(run())
