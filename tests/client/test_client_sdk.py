"""The SDK against a real server: sends, the event stream, receipts and the REST reads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from courier.client import (
    AuthError,
    Client,
    CourierError,
    Event,
    Message,
    Receipt,
    TimelineEvent,
    Typing,
)
from tests.client.support import Server, Users


async def collect(
    client: Client, count: int, *, within: float = 15.0, **options: object
) -> list[TimelineEvent]:
    """The next ``count`` timeline events of ``client``."""
    got: list[TimelineEvent] = []

    async def run() -> None:
        async for event in client.events(**options):  # type: ignore[arg-type]
            if isinstance(event, Message | Receipt):
                got.append(event)
                if len(got) >= count:
                    return

    await asyncio.wait_for(run(), within)
    return got


async def until(condition: Callable[[], bool]) -> None:
    """Wait, politely, until ``condition`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


def bodies(events: list[TimelineEvent]) -> list[str]:
    return [event.body for event in events if isinstance(event, Message)]


def assert_gap_free(events: list[TimelineEvent], first: int) -> None:
    assert [event.seq for event in events] == list(range(first, first + len(events)))


async def test_send_and_receive_both_ways(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert alice.username and bob.username

    sent = await alice.send(bob.username, "hello bob", client_id="c-1")
    assert sent.client_id == "c-1"
    assert sent.seq == 1

    [message] = await collect(bob, 1)
    assert isinstance(message, Message)
    assert (message.from_, message.to, message.body) == (alice.username, bob.username, "hello bob")
    assert message.id == sent.id

    listening = asyncio.create_task(collect(alice, 2))
    await bob.send(alice.username, "hello alice")
    outgoing, incoming = await listening
    assert isinstance(outgoing, Message) and outgoing.seq == sent.seq
    assert isinstance(incoming, Message)
    assert (incoming.from_, incoming.body) == (bob.username, "hello alice")


async def test_events_are_in_order_and_exactly_once(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert bob.username
    for n in range(10):
        await alice.send(bob.username, f"before {n}")

    live = asyncio.create_task(collect(bob, 40))
    await asyncio.gather(*(alice.send(bob.username, f"during {n}") for n in range(30)))
    events = await live
    assert_gap_free(events, 1)
    assert bodies(events)[:10] == [f"before {n}" for n in range(10)]
    assert sorted(bodies(events)[10:]) == sorted(f"during {n}" for n in range(30))
    assert bob.last_seq == 40

    # A second pass resumes after last_seq; a fresh one from 25 replays the rest in order.
    await alice.send(bob.username, "after")
    [latest] = await collect(bob, 1)
    assert latest.seq == 41 and bodies([latest]) == ["after"]
    assert_gap_free(await collect(bob, 16, after=25), 26)


async def test_a_slow_consumer_still_gets_everything(server: Server, users: Users) -> None:
    """A tiny buffer forces the stream to drop events and fetch them again with `sync`."""
    alice = await users(server.url)
    bob = await users(server.url, max_buffer=4)
    assert bob.username
    listening = asyncio.create_task(collect_slowly(bob, 60))
    await asyncio.sleep(0.2)
    for n in range(60):
        await alice.send(bob.username, f"m{n}")
    events = await listening
    assert_gap_free(events, 1)
    assert bodies(events) == [f"m{n}" for n in range(60)]


async def collect_slowly(client: Client, count: int) -> list[TimelineEvent]:
    got: list[TimelineEvent] = []
    async with asyncio.timeout(30):
        async for event in client.events():
            if isinstance(event, Message | Receipt):
                got.append(event)
                await asyncio.sleep(0.01)
                if len(got) >= count:
                    break
    return got


async def test_own_sends_appear_once_in_our_stream(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert bob.username
    listening = asyncio.create_task(collect(alice, 5))
    await until(lambda: alice.connected)  # so the sends go over the WebSocket
    sent = [await alice.send(bob.username, f"n{n}") for n in range(5)]
    events = await listening
    assert_gap_free(events, 1)
    assert [event.seq for event in events] == [s.seq for s in sent]
    assert bodies(events) == [f"n{n}" for n in range(5)]


async def test_a_repeated_client_id_is_stored_once(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert bob.username
    first = await alice.send(bob.username, "once", client_id="same")
    again = await alice.send(bob.username, "once", client_id="same")
    assert again == first
    await alice.send(bob.username, "next")
    assert bodies(await collect(bob, 2)) == ["once", "next"]


async def test_a_send_that_cannot_succeed_raises(server: Server, users: Users) -> None:
    alice = await users(server.url)
    with pytest.raises(CourierError) as raised:
        await asyncio.wait_for(alice.send("nobody-here", "hi"), 10)
    assert raised.value.code == "unknown_user"


async def test_auto_ack_sends_a_delivered_receipt(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert bob.username
    sent = await alice.send(bob.username, "did you get it?")
    await collect(bob, 1, auto_ack=True)
    receipts = [event for event in await collect(alice, 2) if isinstance(event, Receipt)]
    assert receipts and receipts[0].peer == bob.username
    assert receipts[0].status == "delivered" and receipts[0].up_to >= sent.seq


async def test_read_sends_a_read_receipt(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert alice.username and bob.username
    sent = await alice.send(bob.username, "read me")
    [message] = await collect(bob, 1)
    await bob.read(alice.username, message.seq)
    async with asyncio.timeout(15):
        async for event in alice.events(after=sent.seq):
            if isinstance(event, Receipt) and event.status == "read":
                assert event.up_to >= sent.seq
                break


async def test_typing_reaches_the_peer(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert alice.username and bob.username
    seen: list[Event] = []

    async def watch(client: Client) -> None:
        async for event in client.events(from_now=True):
            seen.append(event)
            if isinstance(event, Typing):
                return

    watching = asyncio.create_task(watch(bob))
    alice_stream = asyncio.create_task(watch(alice))
    async with asyncio.timeout(15):
        await until(lambda: alice.connected and bob.connected)
        assert await alice.typing(bob.username)
        await watching
    alice_stream.cancel()
    assert isinstance(seen[-1], Typing) and seen[-1].from_ == alice.username


async def test_conversations_and_history(server: Server, users: Users) -> None:
    alice, bob, carol = [await users(server.url) for _ in range(3)]
    assert alice.username and bob.username and carol.username
    for n in range(5):
        await alice.send(bob.username, f"to bob {n}")
    await carol.send(alice.username, "from carol")

    conversations = await alice.conversations()
    assert [c.peer for c in conversations] == [carol.username, bob.username]

    page = await alice.history(bob.username, limit=3)
    assert bodies(page.messages) == ["to bob 4", "to bob 3", "to bob 2"]
    assert page.next_before is not None
    older = await alice.history(bob.username, before=page.next_before, limit=3)
    assert bodies(older.messages) == ["to bob 1", "to bob 0"]


async def test_a_bad_token_ends_the_stream(server: Server) -> None:
    async with Client(server.url, token="not-a-token") as client:
        with pytest.raises(AuthError):
            await collect(client, 1)
        with pytest.raises(CourierError):
            await client.send("anyone", "hi")


async def test_logout_revokes_the_token(server: Server, users: Users) -> None:
    alice = await users(server.url)
    token = alice.token
    async with Client(server.url, token=token) as other_device:
        streaming = asyncio.create_task(collect(other_device, 1))
        await until(lambda: other_device.connected)
        await alice.logout()
        with pytest.raises(AuthError):
            await streaming  # the live stream ends: reconnecting cannot help
        with pytest.raises(AuthError):
            await other_device.conversations()


async def test_sends_over_the_rate_limit_wait_and_get_through(server: Server, users: Users) -> None:
    """More sends at once than the per-user burst: the SDK backs off and retries them."""
    alice, bob = await users(server.url), await users(server.url)
    assert bob.username
    count = 260
    listening = asyncio.create_task(collect(alice, count, within=60))
    await until(lambda: alice.connected)
    sent = await asyncio.wait_for(
        asyncio.gather(*(alice.send(bob.username, f"burst {n}") for n in range(count))), 60
    )
    assert sorted(s.seq for s in sent) == list(range(1, count + 1))
    own = await listening
    assert_gap_free(own, 1)
    assert sorted(bodies(own)) == sorted(f"burst {n}" for n in range(count))


async def test_profiles_and_people_search(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert alice.username and bob.username
    async with Client(server.url, alice.token) as client:
        assert (await client.me()).display_name == ""
        assert (await client.set_display_name("Alice Zephyr")).display_name == "Alice Zephyr"
    async with Client(server.url, bob.token) as client:
        found = await client.search_users("zeph")
        assert [(p.username, p.display_name) for p in found] == [(alice.username, "Alice Zephyr")]
        with pytest.raises(CourierError) as err:
            await client.search_users(" ")
        assert err.value.code == "bad_request"


async def test_blocks(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert alice.username and bob.username
    async with Client(server.url, alice.token) as client:
        await client.block(bob.username)
        assert await client.blocks() == [bob.username]
        await client.unblock(bob.username)
        assert await client.blocks() == []
