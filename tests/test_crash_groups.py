"""SIGKILL the server in the middle of a stream of group messages, restart it on the same
data directory, and check that every message is in every member's timeline or in none,
that every acknowledged one is there, once, in order, and that retries add exactly the rest."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Api, User
from tests.procs import ServerProcess

MEMBERS = 100
WINDOW = 20
KILL_AFTER = 150
TOTAL = 2000


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[ServerProcess]:
    p = ServerProcess(tmp_path / "data", COURIER_SEND_RATE="100000", COURIER_SEND_BURST="100000")
    try:
        yield p
    finally:
        p.stop()


async def pump_until_killed(
    api: Api, sender: User, gid: str, proc: ServerProcess
) -> tuple[dict[str, int], int]:
    acked: dict[str, int] = {}
    written = 0
    url = api.base.replace("http", "ws") + f"/v1/ws?token={sender.token}"
    ws = await api.http.ws_connect(url)
    window = asyncio.Semaphore(WINDOW)

    async def reader() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame["type"] == "sent":
                acked[frame["client_id"]] = frame["seq"]
                window.release()

    task = asyncio.create_task(reader())
    with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
        for i in range(TOTAL):
            async with asyncio.timeout(10):
                await window.acquire()
            if task.done():
                break
            frame = {"type": "send", "group": gid, "body": f"m{i}", "client_id": f"g{i}"}
            await ws.send_str(json.dumps(frame))
            written += 1
            if written == KILL_AFTER:
                proc.kill()  # up to WINDOW group messages are in flight right now
                break
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)
    await ws.close()
    return acked, written


async def group_messages(api: Api, user: User) -> list[str]:
    timeline = await api.timeline(user)
    assert [e["seq"] for e in timeline] == list(range(1, len(timeline) + 1)), "gap-free"
    return [e["client_id"] for e in timeline if e["type"] == "message"]


async def test_sigkill_mid_group_stream_is_all_members_or_none(proc: ServerProcess) -> None:
    proc.start()
    async with aiohttp.ClientSession() as http:
        api = Api(proc.url, http)
        users = [await api.user(f"member{i:03d}") for i in range(MEMBERS)]
        owner = users[0]
        body = {"name": "crash", "members": [u.name for u in users[1:]]}
        r = await api.call("POST", "/v1/groups", user=owner, json_body=body)
        assert r.status == 201, r
        gid = r.body["id"]
        acked, written = await pump_until_killed(api, owner, gid, proc)
        assert len(acked) >= KILL_AFTER - WINDOW and written == KILL_AFTER

        proc.start()
        stored = await group_messages(api, owner)
        assert len(stored) == len(set(stored)), "no message twice"
        assert set(acked) <= set(stored), "every acknowledged message survived"
        assert [int(c[1:]) for c in stored] == sorted(int(c[1:]) for c in stored), "in order"
        for user in users[1:]:
            assert await group_messages(api, user) == stored, "every member or none"
        sender_seq = {
            e["client_id"]: e["seq"] for e in await api.timeline(owner) if e["type"] == "message"
        }
        assert all(sender_seq[c] == s for c, s in acked.items()), "sent.seq is durable"

        for i in range(written):  # the client retries everything it wrote
            msg = {"group": gid, "body": f"m{i}", "client_id": f"g{i}"}
            r = await api.call("POST", "/v1/messages", user=owner, json_body=msg)
            assert r.status in (200, 201), r
            assert (r.status == 200) == (f"g{i}" in stored)
        expected = sorted(f"g{i}" for i in range(written))
        for user in (users[0], users[1], users[-1]):
            assert sorted(await group_messages(api, user)) == expected, "exactly once each"
