"""A node dies (SIGKILL) in the middle of traffic: it loses only its sockets. Its clients
reconnect to another node, the sender retries what was not acknowledged with the same
client_id, the receiver resumes after its last seq, and nothing is lost or duplicated.

Runs last in this package: it leaves node 2 dead."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal

import aiohttp

from tests.cluster.local.conftest import Cluster
from tests.helpers import Api

TOTAL = 300
KILL_AT = 120
WINDOW = 10


async def test_killing_a_node_loses_nothing(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        doomed, survivor = Api(cluster.nodes[2], http), Api(cluster.nodes[1], http)
        alice, bob = await doomed.user(), await doomed.user()
        alice_ws = await doomed.ws(alice)
        bob_ws = await doomed.ws(bob)
        await alice_ws.recv()
        await bob_ws.recv()

        acked: set[str] = set()
        seen: list[tuple[int, str]] = []

        async def read_sent(ws: aiohttp.ClientWebSocketResponse, window: asyncio.Semaphore) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                frame = json.loads(msg.data)
                if frame["type"] == "sent":
                    acked.add(frame["client_id"])
                    window.release()

        async def read_events(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                frame = json.loads(msg.data)
                if frame["type"] == "message":
                    seen.append((frame["seq"], frame["client_id"]))

        window = asyncio.Semaphore(WINDOW)
        senders = asyncio.create_task(read_sent(alice_ws.conn, window))
        receiver = asyncio.create_task(read_events(bob_ws.conn))
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, TimeoutError):
            for i in range(TOTAL):
                async with asyncio.timeout(5):  # no answers come from a dead node
                    await window.acquire()
                if i == KILL_AT:
                    os.kill(cluster.pid("node2"), signal.SIGKILL)
                await alice_ws.send(
                    {"type": "send", "to": bob.name, "body": f"m{i}", "client_id": f"c{i}"}
                )
        for task in (senders, receiver):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        assert KILL_AT - WINDOW <= len(acked) < TOTAL

        # Both devices reconnect to another node with the same tokens (tokens are durable).
        last_seq = seen[-1][0] if seen else 0
        bob_ws = await survivor.ws(bob, f"after={last_seq}")
        assert (await bob_ws.recv())["type"] == "hello"
        for i in range(TOTAL):  # retry everything not acknowledged, in order
            if f"c{i}" not in acked:
                r = await survivor.send(alice, bob.name, f"m{i}", f"c{i}")
                assert r.status in (200, 201), r
        async with asyncio.timeout(30):
            while len({cid for _, cid in seen}) < TOTAL:
                frame = await bob_ws.recv(timeout=30)
                if frame["type"] == "message":
                    seen.append((frame["seq"], frame["client_id"]))
        seqs = [seq for seq, _ in seen]
        assert seqs == list(range(1, len(seqs) + 1)), "resumed gap-free, nothing twice"
        assert sorted(cid for _, cid in seen) == sorted(f"c{i}" for i in range(TOTAL))
        await bob_ws.close()
