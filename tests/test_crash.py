"""SIGKILL the server in the middle of a pipelined send stream, restart it on the same data
directory, and check that every acknowledged message is there exactly once and that the
client's retries with the same client_id create no duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Api
from tests.procs import ServerProcess

WINDOW = 40
KILL_AFTER = 300
TOTAL = 5000


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[ServerProcess]:
    p = ServerProcess(tmp_path / "data", COURIER_SEND_RATE="100000", COURIER_SEND_BURST="100000")
    try:
        yield p
    finally:
        p.stop()


async def pump_until_killed(
    api: Api, token: str, proc: ServerProcess
) -> tuple[dict[str, int], int]:
    """Send over one WebSocket with WINDOW in flight; SIGKILL the server mid-stream.

    Returns the `sent` answers received (client_id -> seq) and how many sends were written."""
    acked: dict[str, int] = {}
    written = 0
    ws = await api.http.ws_connect(api.base.replace("http", "ws") + f"/v1/ws?token={token}")
    window = asyncio.Semaphore(WINDOW)
    killed = False

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
            await ws.send_str(
                json.dumps({"type": "send", "to": "bob", "body": f"m{i}", "client_id": f"c{i}"})
            )
            written += 1
            if written == KILL_AFTER:
                killed = True
                proc.kill()  # up to WINDOW sends are in flight right now
                break
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)
    await ws.close()
    assert killed, "the server was never killed"
    return acked, written


async def test_sigkill_mid_stream_loses_nothing_acknowledged(proc: ServerProcess) -> None:
    proc.start()
    async with aiohttp.ClientSession() as http:
        api = Api(proc.url, http)
        alice, bob = await api.user("alice"), await api.user("bob")
        acked, written = await pump_until_killed(api, alice.token, proc)
        assert len(acked) >= KILL_AFTER - WINDOW and written >= len(acked)

        proc.start()  # same data directory, same port
        for user, field in ((alice, "client_id"), (bob, "client_id")):
            events = [e for e in await api.timeline(user) if e["type"] == "message"]
            ids = [e[field] for e in events]
            assert len(ids) == len(set(ids)), "no message is stored twice"
            assert set(acked) <= set(ids), "every acknowledged message survived"
            assert set(ids) <= {f"c{i}" for i in range(written)}
            # Stored in the order sent: the suffix numbers increase along the timeline.
            numbers = [int(cid[1:]) for cid in ids]
            assert numbers == sorted(numbers)
        outgoing = {e["client_id"]: e["seq"] for e in await api.timeline(alice)}
        assert all(outgoing[cid] == seq for cid, seq in acked.items()), "sent.seq is durable"

        # The client retries everything it wrote; only what was lost is stored now.
        for i in range(written):
            r = await api.send(alice, "bob", f"m{i}", f"c{i}")
            assert r.status in (200, 201), r
            if f"c{i}" in acked:
                assert r.status == 200 and r.body["seq"] == acked[f"c{i}"]
        events = [e for e in await api.timeline(bob) if e["type"] == "message"]
        ids = [e["client_id"] for e in events]
        assert sorted(ids) == sorted(f"c{i}" for i in range(written)), "exactly once each"
        assert [e["seq"] for e in await api.timeline(bob)] == list(range(1, len(ids) + 1))
