"""Presence over the WebSocket and HTTP (PROTOCOL.md, "Presence")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.support import assert_error, connect
from tests.helpers import Api, Ws

GRACE = 0.3


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"presence_grace_s": GRACE}


async def presence_frame(ws: Ws, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.recv(timeout)
            if frame.get("type") == "presence":
                return frame


async def test_a_contact_sees_online_then_offline_and_can_ask(api: Api) -> None:
    alice, bob, stranger = await api.user(), await api.user(), await api.user()
    msg = {"to": bob.name, "body": "hi", "client_id": "p1"}
    assert (await api.call("POST", "/v1/messages", user=alice, json_body=msg)).status == 201
    bob_ws, _ = await connect(api, bob)
    try:
        alice_ws, _ = await connect(api, alice)
        frame = await presence_frame(bob_ws)
        assert (frame["user"], frame["online"]) == (alice.name, True)
        r = await api.call("GET", f"/v1/presence?users={alice.name},{stranger.name}", user=bob)
        assert r.status == 200, r
        assert r.body["presence"][0]["user"] == alice.name
        assert r.body["presence"][0]["online"] is True
        assert r.body["presence"][1] == {"user": stranger.name, "online": None, "last_seen": None}
        await alice_ws.close()
        frame = await presence_frame(bob_ws)
        assert (frame["user"], frame["online"]) == (alice.name, False)
        assert isinstance(frame["last_seen"], int)
        r = await api.call("GET", f"/v1/presence?users={alice.name}", user=bob)
        assert r.body["presence"] == [
            {"user": alice.name, "online": False, "last_seen": frame["last_seen"]}
        ]
    finally:
        await bob_ws.close()


@pytest.mark.parametrize("query", ["", "users=", "users=,,", "users=" + ",".join(["abc"] * 101)])
async def test_bad_presence_queries_are_400(api: Api, query: str) -> None:
    user = await api.user()
    assert_error(await api.call("GET", f"/v1/presence?{query}", user=user), 400, "bad_request")
