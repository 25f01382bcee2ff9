"""Groups through the SDK and the terminal commands, against a real server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from courier.client import CourierError, GroupChange, Message, Receipt, TimelineEvent, Typing
from tests.client.support import Server, Users
from tests.client.test_client_terminal import cli_env, courier, read_line_with


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


async def test_sdk_live_group_stream_and_typing(server: Server, users: Users) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert bob.username
    group = await alice.create_group("live", [bob.username])
    got: list[object] = []

    async def listen() -> None:
        async for event in bob.events(from_now=True):
            if isinstance(event, Typing) or (isinstance(event, Message) and event.group):
                got.append(event)
                if isinstance(event, Message):
                    return

    task = asyncio.create_task(listen())
    for _ in range(200):
        if bob.connected:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    await alice.send_group(group.id, "live one")
    await asyncio.wait_for(task, 15)
    assert any(isinstance(e, Message) and e.body == "live one" for e in got)


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
