from __future__ import annotations

from tests.helpers import Api


async def test_message_round_trip_over_http_and_ws(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws = await api.ws(bob)
    hello = await ws.recv()
    assert hello == {"type": "hello", "username": bob.name, "last_seq": 0}
    r = await api.send(alice, bob.name, "hi", "c-1")
    assert r.status == 201 and r.body["seq"] == 1
    event = await ws.recv()
    assert event["type"] == "message" and event["body"] == "hi" and event["seq"] == 1
    await ws.close()
