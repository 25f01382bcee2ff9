"""Crash recovery: the server is SIGKILLed and restarted on the same data dir and port."""

from __future__ import annotations

import asyncio
from collections import Counter

from courier.client import Client, Message, Sent, TimelineEvent
from tests.client.support import Server, Users


async def gather_messages(client: Client, count: int, into: list[TimelineEvent]) -> None:
    """Append timeline events to ``into`` until ``count`` messages arrived."""
    async for event in client.events():
        if isinstance(event, Message):
            into.append(event)
            if sum(isinstance(e, Message) for e in into) >= count:
                return


async def test_stream_and_sends_survive_a_crash(own_server: Server, users: Users) -> None:
    alice, bob = await users(own_server.url), await users(own_server.url)
    assert bob.username and bob.token
    bob_polling = Client(own_server.url, bob.token, transport="longpoll", poll_wait=5)
    total = 5 + 100 + 3 + 5

    by_ws: list[TimelineEvent] = []
    by_poll: list[TimelineEvent] = []
    alice_own: list[TimelineEvent] = []
    receivers = [
        asyncio.create_task(gather_messages(bob, total, by_ws)),
        asyncio.create_task(gather_messages(bob_polling, total, by_poll)),
        asyncio.create_task(gather_messages(alice, total, alice_own)),
    ]
    for _ in range(500):
        if alice.connected and bob.connected:
            break
        await asyncio.sleep(0.02)
    assert alice.connected and bob.connected

    try:
        before = [await alice.send(bob.username, f"before {n}") for n in range(5)]
        # Pipelined sends, cut off by the crash at whatever point they reached.
        in_flight = [
            asyncio.create_task(alice.send(bob.username, f"in flight {n}", client_id=f"f{n}"))
            for n in range(100)
        ]
        await asyncio.sleep(0.002)
        await asyncio.to_thread(own_server.kill)

        # Sends made while the server is down wait for it.
        while_down = [
            asyncio.create_task(alice.send(bob.username, f"while down {n}", client_id=f"d{n}"))
            for n in range(3)
        ]
        await asyncio.sleep(0.5)
        assert not any(task.done() for task in while_down)

        await asyncio.to_thread(own_server.start)
        async with asyncio.timeout(60):
            answered: list[Sent] = await asyncio.gather(*in_flight, *while_down)
            after = [await alice.send(bob.username, f"after {n}") for n in range(5)]
            await asyncio.gather(*receivers)
    finally:
        for task in receivers:
            task.cancel()
        await bob_polling.close()

    assert [s.client_id for s in answered] == [f"f{n}" for n in range(100)] + [
        f"d{n}" for n in range(3)
    ]
    expected = (
        [f"before {n}" for n in range(5)]
        + [f"in flight {n}" for n in range(100)]
        + [f"while down {n}" for n in range(3)]
        + [f"after {n}" for n in range(5)]
    )
    for seen in (by_ws, by_poll, alice_own):
        assert [e.seq for e in seen] == list(range(1, total + 1))  # gap-free, no repeats
        bodies = [e.body for e in seen if isinstance(e, Message)]
        assert Counter(bodies) == Counter(expected)  # each send delivered exactly once
    # The sender's copies carry the seqs its sends were answered with.
    sent_seqs = {s.seq for s in [*before, *answered, *after]}
    assert sent_seqs == {e.seq for e in alice_own}
    # Pipelined sends of one connection keep their order.
    ws_order = [e.body for e in by_ws if isinstance(e, Message)]
    assert ws_order[:5] == expected[:5] and ws_order[-5:] == expected[-5:]


async def test_longpoll_transport(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url, transport="longpoll")
    assert bob.username
    await alice.send(bob.username, "queued")
    got: list[TimelineEvent] = []
    listening = asyncio.create_task(gather_messages(bob, 6, got))
    await asyncio.sleep(0.3)
    for n in range(5):
        await alice.send(bob.username, f"live {n}")
    await asyncio.wait_for(listening, 30)
    assert [e.seq for e in got] == list(range(1, 7))
    assert [e.body for e in got if isinstance(e, Message)] == ["queued"] + [
        f"live {n}" for n in range(5)
    ]
    # Sends on a long-poll client go over HTTP, and `from_now` skips what is already there.
    assert alice.username
    async with Client(server.url, bob.token, transport="longpoll") as device:
        tail: list[TimelineEvent] = []
        listening = asyncio.create_task(gather_messages_from_now(device, tail))
        for _ in range(500):
            if device.last_seq == 6:  # the head, found before the first poll
                break
            await asyncio.sleep(0.02)
        await bob.send(alice.username, "reply")
        await asyncio.wait_for(listening, 30)
    assert [e.seq for e in tail] == [7]


async def gather_messages_from_now(client: Client, into: list[TimelineEvent]) -> None:
    async for event in client.events(from_now=True):
        if isinstance(event, Message):
            into.append(event)
            return
