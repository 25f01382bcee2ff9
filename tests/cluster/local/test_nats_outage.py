"""NATS stopped and restarted in the middle of traffic: sends are still stored and
acknowledged, health says degraded, and the receiver ends up with every acknowledged message
exactly once, in order."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp

from courier.cluster.engines import start_nats
from tests.cluster.local.conftest import Cluster
from tests.helpers import Api, Ws


async def eventually_status(api: Api, status: str) -> dict[str, object]:
    async with asyncio.timeout(20):
        while True:
            health = (await api.call("GET", "/healthz")).body
            if health["status"] == status:
                return dict(health)
            await asyncio.sleep(0.1)


async def receive_bodies(ws: Ws, count: int) -> list[tuple[int, str]]:
    got: list[tuple[int, str]] = []
    async with asyncio.timeout(30):
        while len(got) < count:
            frame = await ws.recv(timeout=30)
            if frame["type"] == "message":
                got.append((frame["seq"], frame["body"]))
    return got


async def test_nats_outage_loses_no_acknowledged_message(cluster: Cluster) -> None:
    nats = next(p for p in cluster.processes() if p["name"] == "nats")
    async with aiohttp.ClientSession() as http:
        on0, on1 = Api(cluster.nodes[0], http), Api(cluster.nodes[1], http)
        alice, bob = await on0.user(), await on1.user()
        ws = await on1.ws(bob)
        await ws.recv()

        async def send(batch: str) -> None:
            for i in range(20):
                r = await on0.send(alice, bob.name, f"{batch}{i}", f"{batch}{i}")
                assert r.status == 201, r  # stored and acknowledged whatever NATS does

        await send("before")
        os.kill(nats["pid"], signal.SIGTERM)
        health = await eventually_status(on0, "degraded")
        assert health["broker"] is False and health["store"] is True
        async with http.get(cluster.metrics[0] + "/metrics") as resp:
            metrics = await resp.text()
        assert 'courier_backend_up{backend="broker"} 0.0' in metrics
        await send("during")

        cluster.replace(start_nats(cluster.dir, nats["port"]))
        await eventually_status(on0, "ok")
        await eventually_status(on1, "ok")
        await send("after")

        got = await receive_bodies(ws, 60)
        assert [seq for seq, _ in got] == list(range(1, 61)), "gap-free, in order, once each"
        expected = [f"{b}{i}" for b in ("before", "during", "after") for i in range(20)]
        assert [body for _, body in got] == expected
        await ws.close()
