"""Groups through the SDK and the terminal commands, against a real server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TypeVar

import pytest

from courier.client import (
    Client,
    CourierError,
    GroupChange,
    Message,
    Receipt,
    TimelineEvent,
    Typing,
)
from tests.client.support import Server, Users
from tests.client.test_client_terminal import cli_env, courier, read_line_with

T = TypeVar("T")


async def timeline(client: object) -> list[TimelineEvent]:
    page = await client._http().events(0, limit=1000)  # type: ignore[attr-defined]
    return page.events


async def test_sdk_speaks_groups(server: Server, users: Users) -> None:
    alice, bob, carol = await users(server.url), await users(server.url), await users(server.url)
    assert alice.username and bob.username and carol.username
    group = await alice.create_group("team", [bob.username])
    assert [(m.username, m.role) for m in group.members] == [
        (alice.username, "owner"),
        (bob.username, "member"),
    ]
    assert [g.id for g in await bob.groups()] == [group.id]
    group = await alice.add_member(group.id, carol.username, "admin")
    assert {m.username: m.role for m in group.members}[carol.username] == "admin"
    assert (await carol.rename_group(group.id, "crew")).name == "crew"

    sent = await bob.send_group(group.id, "hello team")
    again = await bob.send_group(group.id, "hello team", sent.client_id)  # exactly once
    assert again.seq == sent.seq
    events = await timeline(carol)
    [message] = [e for e in events if isinstance(e, Message)]
    assert (message.group, message.from_, message.body, message.to) == (
        group.id,
        bob.username,
        "hello team",
        None,
    )
    changes = [e.action for e in events if isinstance(e, GroupChange)]
    assert changes == ["added", "renamed"]
    await carol.ack(message.seq)
    await carol.read_group(group.id, message.seq)
    receipts = [e for e in await timeline(bob) if isinstance(e, Receipt)]
    assert {(r.status, r.peer, r.group) for r in receipts} == {
        ("delivered", carol.username, group.id),
        ("read", carol.username, group.id),
    }
    page = await carol.group_history(group.id)
    assert [m.body for m in page.messages if isinstance(m, Message)] == ["hello team"]
    [conv] = await carol.conversations()
    assert (conv.group, conv.name, conv.peer, conv.unread) == (group.id, "crew", None, 0)

    await carol.leave_group(group.id)
    with pytest.raises(CourierError) as refused:
        await carol.send_group(group.id, "still here?")
    assert refused.value.code == "unknown_group"


async def wait_connected(*clients: Client) -> None:
    for _ in range(500):
        if all(c.connected for c in clients):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the clients did not connect within 10 s")


async def test_sdk_live_group_stream_and_typing(server: Server, users: Users) -> None:
    """Over live WebSockets: a group send and its `sent`, group typing, membership events and
    per-member receipts arrive as typed events."""
    alice, bob, carol = await users(server.url), await users(server.url), await users(server.url)
    assert bob.username and carol.username
    group = await alice.create_group("live", [bob.username])
    to_alice: asyncio.Queue[object] = asyncio.Queue()
    to_bob: asyncio.Queue[object] = asyncio.Queue()

    async def listen(client: Client, into: asyncio.Queue[object]) -> None:
        async for event in client.events(from_now=True):
            await into.put(event)

    async def next_of(into: asyncio.Queue[object], kind: type[T]) -> T:
        async with asyncio.timeout(10):
            while not isinstance(event := await into.get(), kind):
                pass
            return event

    tasks = [
        asyncio.create_task(listen(alice, to_alice)),
        asyncio.create_task(listen(bob, to_bob)),
    ]
    try:
        await wait_connected(alice, bob)
        # Over the WebSocket (alice is connected): stored once, answered with `sent`.
        sent = await alice.send_group(group.id, "live one")
        assert await alice.send_group(group.id, "live one", sent.client_id) == sent
        message = await next_of(to_bob, Message)
        assert (message.group, message.from_, message.body) == (
            group.id,
            alice.username,
            "live one",
        )

        assert await bob.typing_group(group.id)
        typing = await next_of(to_alice, Typing)
        assert (typing.from_, typing.group) == (bob.username, group.id)

        await alice.add_member(group.id, carol.username)
        change = await next_of(to_bob, GroupChange)
        assert (change.action, change.by, change.member, change.role) == (
            "added",
            alice.username,
            carol.username,
            "member",
        )

        await bob.read_group(group.id, message.seq)  # a frame over bob's WebSocket
        while (receipt := await next_of(to_alice, Receipt)).status != "read":
            pass
        assert (receipt.peer, receipt.group, receipt.up_to) == (bob.username, group.id, sent.seq)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_sdk_group_errors(server: Server, users: Users) -> None:
    """What the server refuses reaches the caller as typed errors with the contract's code."""
    alice, bob, carol = await users(server.url), await users(server.url), await users(server.url)
    assert bob.username and carol.username
    group = await alice.create_group("rules", [bob.username])
    cases = [
        (bob.add_member(group.id, carol.username), "forbidden"),
        (bob.rename_group(group.id, "mine now"), "forbidden"),
        (carol.group(group.id), "unknown_group"),
        (carol.group_history(group.id), "unknown_group"),
        (alice.create_group("ghosts", ["nosuchuser00"]), "unknown_user"),
        (alice.remove_member(group.id, alice.username or ""), None),  # the owner leaves
    ]
    for call, code in cases:
        if code is None:
            await call
            continue
        with pytest.raises(CourierError) as refused:
            await call
        assert refused.value.code == code
    # The owner left: the longest-standing member, bob, owns it now.
    assert [(m.username, m.role) for m in (await bob.group(group.id)).members] == [
        (bob.username, "owner")
    ]


async def test_terminal_group_commands(server: Server, users: Users, tmp_path: Path) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert alice.username and alice.token and bob.username and bob.token
    env = cli_env(tmp_path / "none.toml", COURIER_URL=server.url, COURIER_TOKEN=alice.token)
    code, out, err = await courier(env, "group", "create", "ops team", bob.username)
    assert code == 0, err
    gid, name = out.split(maxsplit=1)
    assert name.strip() == "ops team" and gid.startswith("G")
    code, out, err = await courier(env, "group", "members", gid)
    assert out.splitlines() == [f"{alice.username} owner", f"{bob.username} member"]
    code, out, err = await courier(env, "group", "send", gid, "from", "the", "shell")
    assert code == 0 and out.startswith("sent #"), err
    code, out, err = await courier(env, "group", "list")
    assert f"{gid} ops team (2 members)" in out
    code, out, err = await courier(env, "group", "frobnicate")
    assert code != 0

    bob_env = cli_env(tmp_path / "b.toml", COURIER_URL=server.url, COURIER_TOKEN=bob.token)
    chat = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "courier", "chat", gid),
        env=bob_env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert chat.stdin is not None and chat.stdout is not None
        assert "from the shell" in await read_line_with(chat.stdout, "from the shell")
        chat.stdin.write(b"bob in the group\n")
        await chat.stdin.drain()
        async with asyncio.timeout(20):
            async for event in alice.events(after=0):
                if isinstance(event, Message) and event.from_ == bob.username:
                    assert event.group == gid and event.body == "bob in the group"
                    break
        await alice.send_group(gid, "welcome bob")
        assert "welcome bob" in await read_line_with(chat.stdout, "welcome bob")
        chat.stdin.close()
        assert await asyncio.wait_for(chat.wait(), 20) == 0
    finally:
        if chat.returncode is None:
            chat.kill()
            await chat.wait()
    code, out, err = await courier(env, "group", "remove", gid, bob.username)
    assert code == 0 and out.strip() == f"removed {bob.username}", err


async def test_terminal_group_management(server: Server, users: Users, tmp_path: Path) -> None:
    """Roles, rename, refusals, leave, and `group open`, whose chat ends once we are removed."""
    alice, bob, carol = await users(server.url), await users(server.url), await users(server.url)
    assert alice.token and bob.username and bob.token and carol.username and carol.token
    dave = await users(server.url)
    assert dave.username

    def env_of(client: Client, name: str) -> dict[str, str]:
        assert client.token
        return cli_env(
            tmp_path / f"{name}.toml", COURIER_URL=server.url, COURIER_TOKEN=client.token
        )

    a, b, c = env_of(alice, "a"), env_of(bob, "b"), env_of(carol, "c")
    code, out, err = await courier(a, "group", "create", "plans", bob.username)
    assert code == 0, err
    gid = out.split()[0]
    code, out, err = await courier(a, "group", "add", gid, carol.username, "admin")
    assert (code, out.strip()) == (0, f"added {carol.username}"), err
    code, out, err = await courier(b, "group", "members", gid)
    assert f"{carol.username} admin" in out.splitlines()

    code, _, err = await courier(b, "group", "add", gid, dave.username)  # a member may not
    assert code == 1 and "forbidden" in err
    code, _, err = await courier(a, "group", "add", gid, dave.username, "emperor")
    assert code == 1 and "bad_request" in err
    code, out, err = await courier(c, "group", "rename", gid, "better plans")  # an admin may
    assert (code, out.strip()) == (0, "renamed"), err
    code, out, err = await courier(b, "group", "list")
    assert f"{gid} better plans (3 members)" in out

    chat = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "courier", "group", "open", gid),
        env=b,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert chat.stdout is not None
        header = await read_line_with(chat.stdout, "[better plans]")
        assert f"{carol.username} (admin)" in header
        await read_line_with(chat.stdout, "renamed the group 'better plans'")  # history
        await asyncio.sleep(0.5)  # the live stream is up
        await alice.send_group(gid, "are you there?")
        assert "are you there?" in await read_line_with(chat.stdout, "are you there?")
        code, out, err = await courier(a, "group", "remove", gid, bob.username)
        assert code == 0, err
        await read_line_with(chat.stdout, f"removed {bob.username}")
        assert await asyncio.wait_for(chat.wait(), 20) == 0  # the chat ends by itself
    finally:
        if chat.returncode is None:
            chat.kill()
            await chat.wait()

    code, out, err = await courier(c, "group", "leave", gid, "--username", carol.username)
    assert (code, out.strip()) == (0, "left"), err
    code, out, err = await courier(a, "group", "members", gid)
    assert out.splitlines() == [f"{alice.username} owner"]
    code, _, err = await courier(c, "group", "send", gid, "too late")
    assert code == 1 and "unknown_group" in err
