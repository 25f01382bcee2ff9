"""WebSocket bounds against hostile clients: control frames count like every frame, deep JSON
is bad input (never a dead connection task), and a connection's waiting sends are capped."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest

from tests.e2e.support import RawWs
from tests.helpers import Api

DEEP = b"[" * 3000 + b"]" * 3000


async def open_raw(api: Api, query: str = "", rcvbuf: int = 4096) -> RawWs:
    return await RawWs.open(api.base, "/v1/ws" + (f"?{query}" if query else ""), rcvbuf)


@pytest.mark.parametrize(
    "settings_overrides", [{"frame_rate": 100.0, "frame_burst": 100}], ids=["rate"]
)
async def test_pings_past_the_frame_rate_go_unanswered(api: Api) -> None:
    alice = await api.user()
    ws = await open_raw(api, f"token={alice.token}", rcvbuf=1 << 20)
    assert (await ws.json())["type"] == "hello"
    for _ in range(180):  # past the budget, but not twice past it
        ws.send(0x9, b"p" * 125)
    await ws.writer.drain()
    await asyncio.sleep(1.5)  # the bucket refills: the next text frame is served
    ws.send_json({"type": "ping"})
    pongs = 0
    while True:
        opcode, payload = await ws.frame()
        if opcode == 0xA:
            pongs += 1
        elif opcode == 0x1 and json.loads(payload) == {"type": "pong"}:
            break
    # 100 at once plus what refilled while they arrived: not all 180.
    assert 1 <= pongs < 180, pongs
    ws.close()


@pytest.mark.parametrize(
    "settings_overrides", [{"frame_rate": 100.0, "frame_burst": 100}], ids=["rate"]
)
async def test_a_frame_flood_far_past_the_rate_is_closed_1008(api: Api) -> None:
    """Unanswered frames still cost the server their parsing: a client that keeps sending
    past twice its budget is closed instead of keeping a core busy."""
    alice = await api.user()
    ws = await open_raw(api, f"token={alice.token}", rcvbuf=1 << 20)
    assert (await ws.json())["type"] == "hello"
    for _ in range(5000):
        ws.send(0x9, b"p" * 125)
    await ws.writer.drain()
    async with asyncio.timeout(10):
        while True:
            opcode, payload = await ws.frame()
            if opcode == 0x8:
                break
    assert int.from_bytes(payload[:2], "big") == 1008
    assert payload[2:] == b"too_many_frames"
    ws.close()


@pytest.mark.parametrize(
    "settings_overrides",
    [{"frame_rate": 1e9, "frame_burst": 10**9, "ws_send_buffer_max": 64 * 1024}],
    ids=["unlimited-rate"],
)
async def test_a_ping_flood_from_a_client_that_never_reads_is_closed_1013(api: Api) -> None:
    """Pongs wait in the same bounded outgoing queue as events: a client that sends pings
    and never reads the pongs is cut like any slow reader, instead of growing memory."""
    alice = await api.user()
    ws = await open_raw(api, f"token={alice.token}")
    for _ in range(200):  # up to 200 x 400 pings of 125 bytes (about 10 MB of pongs)
        for _ in range(400):
            ws.send(0x9, b"p" * 125)
        try:
            async with asyncio.timeout(2.0):
                await ws.writer.drain()
        except (ConnectionError, TimeoutError):
            break  # the server stopped reading: it is closing
    # Whatever was written before the cut, the stream ends with the server's 1013 close.
    assert await ws.close_code(timeout=30.0) == 1013
    ws.close()


async def test_deep_json_as_the_first_frame_is_refused_and_closed(api: Api) -> None:
    """A first frame nested thousands deep is a failed authentication: an error frame, then
    close 1008; the socket is never left open without a task to end it."""
    alice = await api.user()
    ws = await open_raw(api)
    ws.send(0x1, b'{"type":"auth","token":"%s","z":%s}' % (alice.token.encode(), DEEP))
    error = await ws.json(timeout=5.0)
    assert error["type"] == "error" and error["code"] == "unauthorized", error
    assert "nested" in error["message"]
    assert await ws.close_code(timeout=5.0) == 1008
    ws.close()


async def test_deep_json_on_an_open_connection_is_bad_frame_and_it_goes_on(api: Api) -> None:
    alice = await api.user()
    ws = await open_raw(api, f"token={alice.token}")
    assert (await ws.json())["type"] == "hello"
    ws.send(0x1, b'{"type":"send","client_id":"deep-1","to":"x","body":%s}' % DEEP)
    error = await ws.json(timeout=5.0)
    assert (error["code"], error["ref"]) == ("bad_frame", "deep-1"), error
    ws.send_json({"type": "ping"})
    assert await ws.json() == {"type": "pong"}
    ws.close()


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"send","client_id":"c-7","to":"bob","body":"hi"',  # cut short
        b'{"type":"send","client_id":"c-7","to":"bob","body":"hi","n":"\\q"}',  # bad escape
        b'{"type":"send","client_id":"c-7","to":["bob"],"body":"hi"}',
        b'{"type":"send","to":"bob","client_id":"c-7","body":' + DEEP + b"}",
    ],
    ids=["truncated", "bad-escape", "wrong-type", "deep"],
)
async def test_a_malformed_send_gets_its_client_id_as_ref(api: Api, frame: bytes) -> None:
    alice = await api.user()
    ws = await open_raw(api, f"token={alice.token}")
    assert (await ws.json())["type"] == "hello"
    ws.send(0x1, frame)
    error = await ws.json(timeout=5.0)
    assert (error["type"], error["code"], error["ref"]) == ("error", "bad_frame", "c-7"), error
    ws.close()


@pytest.mark.parametrize(
    "settings_overrides",
    [{"ws_pending_sends_max": 5, "send_rate": 1e6, "send_burst": 10**6}],
    ids=["pending-5"],
)
async def test_sends_waiting_for_the_store_are_capped_per_connection(api: Api) -> None:
    """Pipelined past the cap, a send is refused with its ref (nothing stored for it); every
    send gets exactly one answer, and the accepted ones are all stored."""
    alice, bob = await api.user(), await api.user()
    ws = await open_raw(api, f"token={alice.token}", rcvbuf=1 << 20)
    assert (await ws.json())["type"] == "hello"
    for i in range(300):  # written at once: the server reads them in one go
        ws.send_json({"type": "send", "to": bob.name, "body": f"m{i}", "client_id": f"p-{i}"})
    await ws.writer.drain()
    answers = [await ws.json(timeout=30.0) for _ in range(300)]
    by_ref = {a.get("client_id") or a.get("ref"): a for a in answers}
    assert len(by_ref) == 300
    refused = [a for a in answers if a["type"] == "error"]
    assert refused and all(a["code"] == "too_many_pending_sends" for a in refused), refused
    stored = {e["client_id"] for e in (await api.events(bob, 0, limit=1000)).body["events"]}
    assert stored == {a["client_id"] for a in answers if a["type"] == "sent"}


@pytest.mark.parametrize(
    "settings_overrides", [{"frame_rate": 100.0, "frame_burst": 100}], ids=["rate"]
)
async def test_the_keep_alive_front_answers_pings_within_the_frame_rate(api: Api) -> None:
    """An upgrade on a reused keep-alive connection (aiohttp's front) treats pings alike."""
    alice = await api.user()
    async with aiohttp.ClientSession() as http:
        async with http.get(api.base + "/healthz") as r:
            await r.read()  # leaves a keep-alive connection for the upgrade to reuse
        url = api.base.replace("http", "ws", 1) + f"/v1/ws?token={alice.token}"
        ws = await http.ws_connect(url, autoping=False)
        assert json.loads((await ws.receive()).data)["type"] == "hello"
        await ws.ping(b"first")
        msg = await ws.receive(timeout=5.0)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"first")
        for _ in range(180):  # past the budget, not twice past it
            await ws.ping(b"p")
        await asyncio.sleep(1.5)
        await ws.send_str('{"type":"ping"}')
        pongs = 0
        while True:
            msg = await ws.receive(timeout=10.0)
            if msg.type == aiohttp.WSMsgType.PONG:
                pongs += 1
            elif msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "pong":
                break
        assert 1 <= pongs < 180, pongs
        # A flood far past it is closed, on this front too.
        with contextlib.suppress(ConnectionError):
            for _ in range(3000):
                await ws.ping(b"p")
        msg = await ws.receive(timeout=10.0)
        while msg.type == aiohttp.WSMsgType.PONG:
            msg = await ws.receive(timeout=10.0)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008, msg
        assert msg.extra == "too_many_frames"
