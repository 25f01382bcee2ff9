"""Blocking over HTTP and the WebSocket (PROTOCOL.md, "Blocking")."""

from __future__ import annotations

from tests.e2e.support import assert_error, connect
from tests.helpers import Api


async def test_a_blocked_sender_is_answered_as_usual_and_the_blocker_gets_nothing(
    api: Api,
) -> None:
    alice, bob = await api.user(), await api.user()
    r = await api.call("PUT", f"/v1/blocks/{bob.name}", user=alice)
    assert r.status == 204, r
    r = await api.call("GET", "/v1/blocks", user=alice)
    assert r.status == 200 and r.body == {"blocks": [bob.name]}
    ws, _hello = await connect(api, alice)
    try:
        msg = {"to": alice.name, "body": "hello?", "client_id": "b1"}
        r = await api.call("POST", "/v1/messages", user=bob, json_body=msg)
        assert r.status == 201 and r.body["seq"] == 1, r
        typing = {"type": "typing", "to": alice.name}
        bob_ws, _ = await connect(api, bob)
        await bob_ws.send(typing)
        await bob_ws.send({"type": "ping"})
        assert (await bob_ws.recv())["type"] == "pong"  # no error frame for the typing
        await bob_ws.close()
        await ws.send({"type": "ping"})
        assert (await ws.recv())["type"] == "pong"  # nothing arrived before it
        r = await api.call("GET", "/v1/events?after=0", user=alice)
        assert r.body["events"] == []
        r = await api.call("GET", "/v1/events?after=0", user=bob)
        assert [e["body"] for e in r.body["events"]] == ["hello?"]
    finally:
        await ws.close()
    assert (await api.call("DELETE", f"/v1/blocks/{bob.name}", user=alice)).status == 204
    assert (await api.call("GET", "/v1/blocks", user=alice)).body == {"blocks": []}
    msg = {"to": alice.name, "body": "now?", "client_id": "b2"}
    assert (await api.call("POST", "/v1/messages", user=bob, json_body=msg)).status == 201
    r = await api.call("GET", "/v1/events?after=0", user=alice)
    assert [e["body"] for e in r.body["events"]] == ["now?"]


async def test_bad_blocks_are_refused(api: Api) -> None:
    alice = await api.user()
    assert_error(await api.call("PUT", f"/v1/blocks/{alice.name}", user=alice), 400, "bad_request")
    assert_error(await api.call("PUT", "/v1/blocks/nobody99", user=alice), 404, "unknown_user")
    assert_error(await api.call("DELETE", "/v1/blocks/BAD%20NAME", user=alice), 404)
    assert_error(await api.call("GET", "/v1/blocks"), 401, "unauthorized")
