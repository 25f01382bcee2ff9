"""Two users on different nodes of a real cluster: events cross through NATS, the store is
sharded PostgreSQL, conversations come from Redis."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import aiohttp

from tests.cluster.local.conftest import Cluster
from tests.helpers import Api


def test_every_node_is_healthy(cluster: Cluster) -> None:
    for node in cluster.nodes:
        with urllib.request.urlopen(node + "/healthz", timeout=5) as r:
            assert json.loads(r.read()) == {
                "status": "ok",
                "store": True,
                "broker": True,
                "cache": True,
            }


async def test_websocket_delivery_across_nodes(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        on0, on2 = Api(cluster.nodes[0], http), Api(cluster.nodes[2], http)
        alice, bob = await on0.user(), await on2.user()
        alice_ws, bob_ws = await on0.ws(alice), await on2.ws(bob)
        assert (await alice_ws.recv())["type"] == (await bob_ws.recv())["type"] == "hello"

        await alice_ws.send(
            {"type": "send", "to": bob.name, "body": "over NATS", "client_id": "a1"}
        )
        sent = await alice_ws.recv_until(lambda f: f["type"] == "sent")
        event = await bob_ws.recv()
        assert (event["type"], event["body"], event["seq"]) == ("message", "over NATS", 1)

        # The receipt travels back the other way, to alice's node.
        await bob_ws.send({"type": "ack", "seq": 1})
        receipt = await alice_ws.recv_until(lambda f: f["type"] == "receipt")
        assert (receipt["status"], receipt["up_to"], receipt["peer"]) == (
            "delivered",
            sent["seq"],
            bob.name,
        )
        # Typing is ephemeral and crosses nodes too.
        await bob_ws.send({"type": "typing", "to": alice.name})
        typing = await alice_ws.recv_until(lambda f: f["type"] == "typing")
        assert typing == {"type": "typing", "from": bob.name}
        await alice_ws.close()
        await bob_ws.close()


async def test_long_poll_is_woken_by_a_send_on_another_node(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        on0, on1 = Api(cluster.nodes[0], http), Api(cluster.nodes[1], http)
        alice, bob = await on0.user(), await on1.user()
        poll = asyncio.create_task(on1.events(bob, 0, wait=20))
        await asyncio.sleep(0.5)
        started = asyncio.get_running_loop().time()
        r = await on0.send(alice, bob.name, "wake up", "lp-1")
        assert r.status == 201
        answer = await poll
        assert asyncio.get_running_loop().time() - started < 5
        assert [e["body"] for e in answer.body["events"]] == ["wake up"]


async def test_any_node_serves_any_user(cluster: Cluster) -> None:
    """Correctness does not depend on the balancer: history, conversations and logout work
    from every node."""
    async with aiohttp.ClientSession() as http:
        apis = [Api(node, http) for node in cluster.nodes]
        alice, bob = await apis[0].user(), await apis[1].user()
        for i, api in enumerate(apis):
            assert (await api.send(alice, bob.name, f"m{i}", f"any-{i}")).status == 201
        for api in apis:
            page = await api.call("GET", f"/v1/conversations/{alice.name}/messages", user=bob)
            assert [m["body"] for m in page.body["messages"]] == ["m2", "m1", "m0"]
            convs = await api.call("GET", "/v1/conversations", user=bob)
            assert convs.body["conversations"][0]["unread"] == 3
        # A WebSocket opened on node 2 is closed when the token is logged out on node 0.
        ws = await apis[2].ws(bob)
        await ws.recv()
        assert (await apis[0].call("DELETE", "/v1/sessions/current", user=bob)).status == 204
        frame = await ws.recv()
        assert frame["code"] == "unauthorized"
        code, _ = await ws.closed()
        assert code == 1008
        assert (await apis[1].events(bob)).status == 401


async def test_a_session_ended_on_one_node_closes_its_websocket_on_another(
    cluster: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        apis = [Api(node, http) for node in cluster.nodes]
        laptop = await apis[0].user()
        phone = await apis[2].login(laptop.name)
        ws = await apis[2].ws(phone)
        assert (await ws.recv())["type"] == "hello"

        listed = (await apis[1].call("GET", "/v1/sessions", user=laptop)).body["sessions"]
        (phone_id,) = [s["id"] for s in listed if not s["current"]]
        r = await apis[0].call("DELETE", f"/v1/sessions/{phone_id}", user=laptop)
        assert r.status == 204
        frame = await ws.recv()
        assert frame["code"] == "unauthorized"
        code, _ = await ws.closed()
        assert code == 1008
        for api in apis:
            assert (await api.events(phone)).status == 401
            left = (await api.call("GET", "/v1/sessions", user=laptop)).body["sessions"]
            assert [s["current"] for s in left] == [True]
