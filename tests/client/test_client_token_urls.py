"""The SDK never puts the token in a URL: it authenticates in the first WebSocket frame, so a
proxy's access log in front of the server holds no secret. The relay in front of the server
records the request lines exactly as they arrived."""

from __future__ import annotations

import asyncio

from courier.client import Client, Message
from tests.client.support import PASSWORD, RecordingRelay, Server, Users, new_username


async def test_the_token_never_goes_in_a_url(server: Server, users: Users) -> None:
    alice = await users(server.url)
    assert alice.username
    async with RecordingRelay(server.port) as relay:
        bob = await Client.register(relay.url, new_username(), PASSWORD)
        try:
            assert bob.token and bob.username
            token = bob.token
            got: list[Message] = []

            async def receive(count: int) -> None:
                async for event in bob.events():
                    if isinstance(event, Message):
                        got.append(event)
                        if len(got) >= count:
                            return

            stream = asyncio.create_task(receive(2))
            await alice.send(bob.username, "first")
            for _ in range(500):
                if len(got) == 1:
                    break
                await asyncio.sleep(0.02)
            assert [m.body for m in got] == ["first"]

            # A proxy restart cuts the socket: the SDK comes back by itself, after seq 1.
            relay.drop_all()
            await alice.send(bob.username, "second")
            await asyncio.wait_for(stream, 30)
            await bob.send(alice.username, "over HTTP or the socket, either way")
            await bob.logout()
        finally:
            await bob.close()

    targets = relay.targets()
    ws = [t for t in targets if t.startswith("/v1/ws")]
    assert ws[0] == f"/v1/ws?after=0&u={bob.username}"
    assert ws[1:] and set(ws[1:]) == {f"/v1/ws?after=1&u={bob.username}"}, ws
    assert "/v1/sessions/current" in targets  # the relay saw the REST calls too
    for target in targets:
        assert "token" not in target.lower(), target
        assert token not in target, target
    assert [m.body for m in got] == ["first", "second"]
