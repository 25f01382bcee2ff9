"""A node dies (SIGKILL) in the middle of a 500-member group's fan-out: every message is in
every member's timeline or in none once the surviving nodes have completed the fan-out
records the dead node left, every acknowledged one is there, and the sender's retries add
exactly the rest, once each.

Runs after test_node_kill (which leaves node 2 dead): this one kills node 1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import aiohttp

from tests.cluster.local.conftest import Cluster
from tests.helpers import PASSWORD, Api, User

MEMBERS = 500
SAMPLE = 24
TOTAL = 200
KILL_AT = 60
WINDOW = 8


async def register(api: Api, names: list[str]) -> None:
    """Each from its own client address (the balancer's X-Forwarded-For), so the per-address
    registration throttle does not apply to the test as a whole."""
    limit = asyncio.Semaphore(8)

    async def one(i: int, name: str) -> None:
        async with limit:
            headers = {"X-Forwarded-For": f"10.9.{i // 250}.{i % 250 + 1}"}
            body = {"username": name, "password": PASSWORD}
            r = await api.call("POST", "/v1/users", json_body=body, headers=headers)
            assert r.status == 201, r

    await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))


async def login(api: Api, name: str, i: int) -> User:
    headers = {"X-Forwarded-For": f"10.8.0.{i + 1}"}
    body = {"username": name, "password": PASSWORD}
    r = await api.call("POST", "/v1/sessions", json_body=body, headers=headers)
    assert r.status == 201, r
    return User(name, r.body["token"])


async def messages(api: Api, user: User) -> list[str]:
    timeline = await api.timeline(user)
    assert [e["seq"] for e in timeline] == list(range(1, len(timeline) + 1)), user.name
    return [e["client_id"] for e in timeline if e["type"] == "message"]


async def test_a_node_killed_mid_fanout_leaves_every_member_or_none(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        doomed, survivor = Api(cluster.nodes[1], http), Api(cluster.nodes[0], http)
        owner = await survivor.user()
        names = [f"gk{i:03d}x" for i in range(MEMBERS - 1)]
        await register(survivor, names)
        body = {"name": "big", "members": names}
        r = await survivor.call("POST", "/v1/groups", user=owner, json_body=body)
        assert r.status == 201, r
        gid = r.body["id"]
        sender = await login(doomed, owner.name, 200)

        acked: set[str] = set()
        window = asyncio.Semaphore(WINDOW)

        async def send(i: int) -> None:
            try:
                msg = {"group": gid, "body": f"m{i}", "client_id": f"g{i}"}
                r = await doomed.call("POST", "/v1/messages", user=sender, json_body=msg)
                if r.status == 201:
                    acked.add(f"g{i}")
            finally:
                window.release()

        tasks = []
        with contextlib.suppress(TimeoutError):
            for i in range(TOTAL):
                async with asyncio.timeout(10):
                    await window.acquire()
                if i == KILL_AT:
                    os.kill(cluster.pid("node1"), signal.SIGKILL)
                    break
                tasks.append(asyncio.create_task(send(i)))
        await asyncio.gather(*tasks, return_exceptions=True)
        assert KILL_AT - WINDOW <= len(acked) <= KILL_AT

        picked = names[:: MEMBERS // SAMPLE]
        sample = [owner] + [await login(survivor, n, i) for i, n in enumerate(picked)]
        # The survivors complete what the dead node left within a few seconds.
        async with asyncio.timeout(60):
            while True:
                stored = [await messages(survivor, u) for u in sample]
                if all(s == stored[0] for s in stored) and acked <= set(stored[0]):
                    break
                await asyncio.sleep(1.0)
        ids = stored[0]
        assert len(ids) == len(set(ids)), "no message twice"
        # Concurrent HTTP sends have no order among them; every member sees the same one.
        assert all(s == ids for s in stored)

        for i in range(KILL_AT):  # the sender retries everything, on the surviving node
            msg = {"group": gid, "body": f"m{i}", "client_id": f"g{i}"}
            r = await survivor.call("POST", "/v1/messages", user=owner, json_body=msg)
            assert r.status in (200, 201), r
        expected = sorted(f"g{i}" for i in range(KILL_AT))
        for user in sample:
            assert sorted(await messages(survivor, user)) == expected, user.name
