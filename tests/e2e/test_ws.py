"""The WebSocket endpoint /v1/ws: authentication, frames, ordering, limits and shedding."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from courier.server import Server
from tests.e2e.support import (
    RawWs,
    assert_error,
    assert_quiet,
    connect,
    eventually,
    hello,
    metric,
    recv_events,
    recv_sent,
)
from tests.helpers import Api, User, Ws


@pytest.fixture(params=["lean", "aiohttp"])
def ws_front(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both WebSocket fronts of the server."""
    return str(request.param)


def overrides(**values: Any) -> pytest.MarkDecorator:
    """Run one test on a server started with these settings."""
    return pytest.mark.parametrize("settings_overrides", [values], ids=["settings"])


def send_frame(to: str, body: str, client_id: str) -> dict[str, Any]:
    return {"type": "send", "to": to, "body": body, "client_id": client_id}


async def assert_alive(ws: Ws) -> None:
    await ws.send({"type": "ping"})
    assert await ws.recv_until(lambda f: f["type"] != "error") == {"type": "pong"}


# ---- authentication ------------------------------------------------------------------------
async def test_the_upgrade_is_served_by_the_chosen_front(api: Api) -> None:
    await connect(api, await api.user())
    r = await api.metrics()
    line = f'courier_ws_upgrades_total{{front="{api.front}"}} 1.0'
    assert line in r.body.splitlines(), [x for x in r.body.splitlines() if "upgrades" in x]


async def test_hello_is_the_first_frame_with_the_head(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    for i in range(3):
        await api.send(alice, bob.name, f"m{i}", f"c{i}")
    ws = await api.ws(bob)
    assert await ws.recv() == {"type": "hello", "username": bob.name, "last_seq": 3}
    await assert_quiet(ws)  # no replay without `after`
    await ws.close()


async def test_first_frame_auth(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(alice, bob.name, "old", "c0")
    ws = await api.ws()
    await ws.send({"type": "auth", "token": bob.token})
    assert await ws.recv() == {"type": "hello", "username": bob.name, "last_seq": 1}
    await api.send(alice, bob.name, "live", "c1")
    [event] = await recv_events(ws, 1)
    assert (event["seq"], event["body"]) == (2, "live")
    await ws.close()


async def test_first_frame_auth_with_after_replays(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    for i in range(3):
        await api.send(alice, bob.name, f"m{i}", f"c{i}")
    ws = await api.ws()
    await ws.send({"type": "auth", "token": bob.token, "after": 1})
    assert (await ws.recv())["type"] == "hello"
    assert [e["seq"] for e in await recv_events(ws, 2)] == [2, 3]
    await ws.close()


async def test_a_bad_query_token_is_refused_with_401_before_the_upgrade(api: Api) -> None:
    assert_error(await api.call("GET", "/v1/ws?token=nonsense"), 401, "unauthorized")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.http.ws_connect(api.base.replace("http", "ws", 1) + "/v1/ws?token=nonsense")
    assert refused.value.status == 401


async def test_a_failed_auth_frame_gets_an_error_then_close_1008(api: Api) -> None:
    ws = await api.ws()
    await ws.send({"type": "auth", "token": "not a token"})
    frame = await ws.recv()
    assert frame["type"] == "error" and frame["code"] == "unauthorized"
    code, _ = await ws.closed()
    assert code == 1008


@pytest.mark.parametrize(
    "first",
    [{"type": "ping"}, {"type": "send", "to": "x", "body": "y", "client_id": "z"}, "hello"],
    ids=["ping", "send", "not-json"],
)
async def test_a_first_frame_that_is_not_auth_closes_1008(api: Api, first: Any) -> None:
    ws = await api.ws()
    if isinstance(first, str):
        await ws.conn.send_str(first)
    else:
        await ws.send(first)
    frame = await ws.recv()
    assert frame["type"] == "error" and frame["code"] == "unauthorized"
    code, _ = await ws.closed()
    assert code == 1008


async def test_negative_after_is_refused_before_the_upgrade(api: Api) -> None:
    bob = await api.user()
    r = await api.call("GET", f"/v1/ws?token={bob.token}&after=-1")
    assert_error(r, 400, "bad_request")


# ---- sending -------------------------------------------------------------------------------
async def test_send_is_answered_by_sent_with_the_client_id(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(bob, alice.name, "make the seqs differ", "x")
    await api.send(bob, alice.name, "again", "y")
    ws, _ = await connect(api, alice)
    await ws.send(send_frame(bob.name, "hi bob", "w-1"))
    sent = await ws.recv()
    assert sent["type"] == "sent"
    assert set(sent) == {"type", "client_id", "id", "seq", "ts"}
    assert sent["client_id"] == "w-1" and sent["seq"] == 3
    [incoming] = [e for e in await api.timeline(bob) if e["client_id"] == "w-1"]
    assert (incoming["id"], incoming["ts"], incoming["seq"]) == (sent["id"], sent["ts"], 3)
    await ws.close()


async def test_a_failed_send_is_an_error_with_ref(api: Api) -> None:
    alice = await api.user()
    ws, _ = await connect(api, alice)
    cases = [
        (send_frame("nobody-here", "hi", "r-1"), "unknown_user"),
        (send_frame(alice.name, "hi", "r-2"), "bad_request"),
        (send_frame("nobody-here", "x" * 4097, "r-3"), "body_too_long"),
        (send_frame("nobody-here", "", "r-4"), "bad_request"),
    ]
    for frame, code in cases:
        await ws.send(frame)
        error = await ws.recv()
        assert error["type"] == "error", error
        assert (error["code"], error["ref"]) == (code, frame["client_id"])
        assert isinstance(error["message"], str) and error["message"]
    await assert_alive(ws)
    await ws.close()


async def test_a_retried_client_id_is_answered_with_the_original_sent(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    await ws.send(send_frame(bob.name, "once", "dup"))
    first = await ws.recv()
    await ws.send(send_frame(bob.name, "once", "dup"))
    assert await ws.recv() == first
    http = await api.send(alice, bob.name, "once", "dup")
    assert http.status == 200
    assert {k: http.body[k] for k in ("id", "seq", "ts")} == {
        k: first[k] for k in ("id", "seq", "ts")
    }
    assert len(await api.timeline(bob)) == 1
    await ws.close()


async def test_pipelined_sends_are_stored_in_order(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    for i in range(20):
        await ws.send(send_frame(bob.name, f"p{i:02d}", f"p-{i}"))
    answers = await recv_sent(ws, 20)
    assert [a["client_id"] for a in answers] == [f"p-{i}" for i in range(20)]
    assert [a["seq"] for a in answers] == list(range(1, 21))
    for user in (alice, bob):
        assert [e["body"] for e in await api.timeline(user)] == [f"p{i:02d}" for i in range(20)]
    await ws.close()


async def test_the_senders_other_devices_get_the_outgoing_copy(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    laptop, _ = await connect(api, alice)
    phone, _ = await connect(api, await api.login(alice.name))
    recipient, _ = await connect(api, bob)
    await laptop.send(send_frame(bob.name, "from the laptop", "l-1"))
    sent = await laptop.recv()
    assert sent["type"] == "sent"
    [copy] = await recv_events(phone, 1)
    assert copy["seq"] == sent["seq"] and copy["from"] == alice.name
    assert copy["body"] == "from the laptop" and copy["client_id"] == "l-1"
    [incoming] = await recv_events(recipient, 1)
    assert incoming["body"] == "from the laptop"
    await assert_quiet(laptop)  # the sending connection got `sent`, not its own copy
    # An HTTP send reaches every WebSocket of the sender.
    r = await api.send(alice, bob.name, "from http", "h-1")
    for ws in (laptop, phone):
        [event] = await recv_events(ws, 1)
        assert (event["seq"], event["body"]) == (r.body["seq"], "from http")
    for ws in (laptop, phone, recipient):
        await ws.close()


async def test_the_connection_that_sent_still_advances_past_its_copy(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    await ws.send(send_frame(bob.name, "mine", "m-1"))
    assert (await ws.recv())["type"] == "sent"
    await api.send(bob, alice.name, "reply", "b-1")
    [reply] = await recv_events(ws, 1)
    assert (reply["seq"], reply["body"]) == (2, "reply")
    await ws.close()


# ---- other frames --------------------------------------------------------------------------
async def test_text_that_is_not_utf8_closes_1007(api: Api, request: pytest.FixtureRequest) -> None:
    """RFC 6455 8.1, even where the JSON decoder would not look (a field it skips)."""
    if api.front == "aiohttp":
        # aiohttp's reader checks UTF-8 only with decode_text=True, which ws_aiohttp.py
        # turns off; the text reaches msgspec, which skips the unknown field unchecked.
        request.applymarker(pytest.mark.xfail(strict=True, reason="no UTF-8 check yet"))
    ws, _ = await connect(api, await api.user())
    await ws.conn.send_frame(b'{"type":"ping","note":"\xf4\x90\x80\x80"}', aiohttp.WSMsgType.TEXT)
    assert (await ws.closed(timeout=2.0))[0] == 1007


async def test_ping_is_answered_by_pong(api: Api) -> None:
    ws, _ = await connect(api, await api.user())
    await ws.send({"type": "ping"})
    assert await ws.recv() == {"type": "pong"}
    await ws.close()


async def test_sync_replays_then_answers_synced(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    for i in range(5):
        await api.send(alice, bob.name, f"m{i}", f"c{i}")
    ws, _ = await connect(api, bob)
    await ws.send({"type": "sync", "after": 1, "limit": 2})
    assert [(await ws.recv())["seq"] for _ in range(2)] == [2, 3]
    assert await ws.recv() == {"type": "synced", "last_seq": 3, "more": True}
    await ws.send({"type": "sync", "after": 3})
    assert [(await ws.recv())["seq"] for _ in range(2)] == [4, 5]
    assert await ws.recv() == {"type": "synced", "last_seq": 5, "more": False}
    await ws.send({"type": "sync", "after": 5, "limit": 10})
    assert await ws.recv() == {"type": "synced", "last_seq": 5, "more": False}
    await ws.close()


async def test_typing_is_forwarded_and_never_stored(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    typist, _ = await connect(api, alice)
    watcher, _ = await connect(api, bob)
    await typist.send({"type": "typing", "to": bob.name})
    assert await watcher.recv() == {"type": "typing", "from": alice.name}
    await assert_quiet(typist)
    assert await api.timeline(bob) == []
    assert await api.timeline(alice) == []
    again, greeting = await connect(api, bob)
    assert greeting["last_seq"] == 0
    for ws in (typist, watcher, again):
        await ws.close()


@pytest.mark.parametrize("to", ["nobody-here", "NOT VALID", "self"])
async def test_typing_to_an_unknown_user_is_an_error(api: Api, to: str) -> None:
    alice = await api.user()
    ws, _ = await connect(api, alice)
    await ws.send({"type": "typing", "to": alice.name if to == "self" else to})
    error = await ws.recv()
    assert error["type"] == "error" and error["code"] == "unknown_user"
    await assert_alive(ws)
    await ws.close()


async def test_ack_and_read_frames_beyond_the_head_are_errors(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(alice, bob.name, "hi", "c1")
    ws, _ = await connect(api, bob)
    await ws.send({"type": "ack", "seq": 2})
    assert (await ws.recv())["code"] == "bad_request"
    await ws.send({"type": "read", "peer": alice.name, "seq": 9})
    assert (await ws.recv())["code"] == "bad_request"
    await ws.send({"type": "read", "peer": "nobody-here", "seq": 1})
    assert (await ws.recv())["code"] == "unknown_user"
    await ws.send({"type": "ack", "seq": 1})
    await assert_alive(ws)

    async def receipted() -> bool:
        return [e.get("up_to") for e in await api.timeline(alice) if e["type"] == "receipt"] == [1]

    await eventually(receipted)
    await ws.close()


BAD_FRAMES: list[tuple[str, str | bytes]] = [
    ("not-json", "this is not json"),
    ("truncated", '{"type": "send", "to": '),
    ("array", "[1, 2, 3]"),
    ("string", '"ping"'),
    ("no-type", '{"to": "bob"}'),
    ("unknown-type", '{"type": "shout", "to": "bob"}'),
    ("missing-fields", '{"type": "send", "to": "bob"}'),
    ("wrong-type", '{"type": "ack", "seq": "three"}'),
    ("negative-seq", '{"type": "ack", "seq": -1}'),
    ("sync-limit-0", '{"type": "sync", "after": 0, "limit": 0}'),
    ("long-client-id", json.dumps(send_frame("bob", "hi", "x" * 65))),
    ("auth-again", '{"type": "auth", "token": "whatever"}'),
    ("binary", b'{"type": "ping"}'),
]


@pytest.mark.parametrize(("name", "data"), BAD_FRAMES, ids=[n for n, _ in BAD_FRAMES])
async def test_bad_frames_get_bad_frame_and_the_connection_stays_open(
    api: Api, name: str, data: str | bytes
) -> None:
    ws, _ = await connect(api, await api.user())
    if isinstance(data, bytes):
        await ws.conn.send_bytes(data)
    else:
        await ws.conn.send_str(data)
    error = await ws.recv()
    assert error["type"] == "error" and error["code"] == "bad_frame", error
    assert isinstance(error["message"], str) and error["message"]
    assert "ref" in error
    await assert_alive(ws)
    await ws.close()


async def test_a_malformed_send_refers_to_its_client_id(api: Api) -> None:
    ws, _ = await connect(api, await api.user())
    await ws.send({"type": "send", "to": "bob", "client_id": "lost-body"})
    error = await ws.recv()
    assert (error["code"], error["ref"]) == ("bad_frame", "lost-body")
    await ws.close()


async def test_an_oversize_frame_closes_1009(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    await ws.send(send_frame(bob.name, "x" * (65 * 1024), "huge"))
    code, _ = await ws.closed()
    assert code == 1009
    assert await api.timeline(bob) == []


@overrides(frame_max_bytes=1024)
async def test_the_frame_limit_is_configurable(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    await ws.send(send_frame(bob.name, "x" * 900, "fits"))
    assert (await ws.recv())["type"] == "sent"
    await ws.send(send_frame(bob.name, "x" * 1100, "too-big"))
    code, _ = await ws.closed()
    assert code == 1009


def frame_of_size(to: str, size: int, client_id: str) -> str:
    """A send frame of exactly `size` bytes."""
    empty = json.dumps(send_frame(to, "", client_id))
    text = json.dumps(send_frame(to, "x" * (size - len(empty)), client_id))
    assert len(text.encode()) == size
    return text


@overrides(body_max_chars=100_000)
async def test_a_frame_one_byte_under_the_limit_is_accepted(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    await ws.conn.send_str(frame_of_size(bob.name, 64 * 1024 - 1, "under"))
    assert (await ws.recv())["type"] == "sent"
    await ws.conn.send_str(frame_of_size(bob.name, 64 * 1024 + 1, "over"))
    code, _ = await ws.closed()
    assert code == 1009


@overrides(body_max_chars=100_000)
async def test_a_frame_of_exactly_64_kib_is_accepted(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    await ws.conn.send_str(frame_of_size(bob.name, 64 * 1024, "exact"))
    assert (await ws.recv())["type"] == "sent"
    await ws.close()


@overrides(auth_timeout=0.3)
async def test_a_connection_that_never_authenticates_is_closed_1008(api: Api) -> None:
    ws = await api.ws()
    error = await ws.recv()
    assert error["type"] == "error" and error["code"] == "unauthorized"
    code, _ = await ws.closed()
    assert code == 1008


@overrides(typing_rate=1.0, typing_burst=2)
async def test_typing_over_the_rate_is_rate_limited(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    watcher, _ = await connect(api, bob)
    for _ in range(3):
        await ws.send({"type": "typing", "to": bob.name})
    error = await ws.recv()
    assert error["type"] == "error" and error["code"] == "rate_limited"
    for _ in range(2):
        assert await watcher.recv() == {"type": "typing", "from": alice.name}
    await assert_quiet(watcher)
    await ws.close()
    await watcher.close()


# ---- replay and ordering -------------------------------------------------------------------
async def test_after_replays_then_goes_live_without_gaps(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    for i in range(10):
        await api.send(alice, bob.name, f"old{i}", f"o{i}")
    ws = await api.ws(bob, "after=4")
    assert (await hello(ws))["last_seq"] == 10
    replay = await recv_events(ws, 6)
    assert [e["seq"] for e in replay] == list(range(5, 11))
    await api.send(alice, bob.name, "new", "n1")
    [live] = await recv_events(ws, 1)
    assert (live["seq"], live["body"]) == (11, "new")
    await ws.close()


async def test_after_beyond_the_head_starts_at_the_head(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(alice, bob.name, "one", "c1")
    ws = await api.ws(bob, "after=99")
    assert (await hello(ws))["last_seq"] == 1
    await api.send(alice, bob.name, "two", "c2")
    [live] = await recv_events(ws, 1)
    assert live["seq"] == 2
    await ws.close()


@overrides(send_rate=100_000.0, send_burst=100_000)
async def test_a_replay_during_heavy_traffic_is_gap_free(api: Api) -> None:
    bob = await api.user()
    senders = [await api.user() for _ in range(3)]
    conns = [(await connect(api, s))[0] for s in senders]
    per_sender = 150

    async def blast(ws: Ws, tag: str) -> None:
        for i in range(per_sender):
            await ws.send(send_frame(bob.name, f"{tag}{i}", f"{tag}{i}"))
            if i % 25 == 0:
                await asyncio.sleep(0)

    traffic = [asyncio.create_task(blast(ws, f"s{n}-")) for n, ws in enumerate(conns)]
    await eventually(lambda: _head_at_least(api, bob, 30))
    reader = await api.ws(bob, "after=0")
    await hello(reader)
    await eventually(lambda: _head_at_least(api, bob, 200))
    joiner = await api.ws(bob)
    start = (await hello(joiner))["last_seq"]
    await asyncio.gather(*traffic)
    for ws in conns:
        assert all(a["type"] == "sent" for a in await recv_sent(ws, per_sender, timeout=30.0))
    total = per_sender * len(senders)
    events = await recv_events(reader, total, timeout=30.0)
    assert [e["seq"] for e in events] == list(range(1, total + 1))
    for n in range(len(senders)):
        mine = [e["body"] for e in events if e["from"] == senders[n].name]
        assert mine == [f"s{n}-{i}" for i in range(per_sender)]
    await assert_quiet(reader)
    joined = await recv_events(joiner, total - start, timeout=30.0)
    assert [e["seq"] for e in joined] == list(range(start + 1, total + 1))
    await assert_quiet(joiner)
    for ws in [*conns, reader, joiner]:
        await ws.close()


async def _head_at_least(api: Api, user: User, seq: int) -> bool:
    r = await api.events(user, seq - 1, limit=1)
    return bool(r.body["events"])


async def test_server_shutdown_closes_websockets_with_1001(api: Api, server: Server) -> None:
    ws, _ = await connect(api, await api.user())
    await server.stop()
    msg = await ws.conn.receive(timeout=5.0)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1001, "server_shutdown")


# ---- limits --------------------------------------------------------------------------------
@overrides(max_connections_per_user=2)
async def test_too_many_connections_with_query_token_is_429_before_the_upgrade(api: Api) -> None:
    alice = await api.user()
    first, _ = await connect(api, alice)
    second, _ = await connect(api, await api.login(alice.name))
    r = await api.call("GET", f"/v1/ws?token={alice.token}")
    assert_error(r, 429, "too_many_connections")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.ws(alice)
    assert refused.value.status == 429
    # Held long-polls count too.
    assert_error(await api.events(alice, 0, wait=5), 429, "too_many_connections")
    await first.close()

    async def room() -> bool:
        return await metric(api, "courier_connections") == 1

    await eventually(room)
    third, _ = await connect(api, alice)
    await second.close()
    await third.close()


@overrides(max_connections_per_user=2)
async def test_too_many_connections_with_an_auth_frame_is_error_then_1008(api: Api) -> None:
    alice = await api.user()
    held = [(await connect(api, alice))[0] for _ in range(2)]
    ws = await api.ws()
    await ws.send({"type": "auth", "token": alice.token})
    error = await ws.recv()
    assert error["type"] == "error" and error["code"] == "too_many_connections"
    code, _ = await ws.closed()
    assert code == 1008
    for conn in held:
        await assert_alive(conn)
        await conn.close()


async def test_logout_closes_that_tokens_live_sockets(api: Api) -> None:
    alice = await api.user()
    other = await api.login(alice.name)
    doomed = [(await connect(api, alice))[0] for _ in range(2)]
    survivor, _ = await connect(api, other)
    r = await api.call("DELETE", "/v1/sessions/current", user=alice)
    assert r.status == 204
    for ws in doomed:
        error = await ws.recv()
        assert error["type"] == "error" and error["code"] == "unauthorized"
        code, _ = await ws.closed()
        assert code == 1008
    await assert_alive(survivor)
    await survivor.close()
    assert_error(await api.call("GET", f"/v1/ws?token={alice.token}"), 401, "unauthorized")


@overrides(send_rate=1.0, send_burst=2)
async def test_sends_over_the_rate_get_rate_limited_with_ref(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    for i in range(4):
        await ws.send(send_frame(bob.name, f"r{i}", f"r-{i}"))
    replies = await recv_sent(ws, 4)
    answers = {a["client_id"] if a["type"] == "sent" else a["ref"]: a for a in replies}
    assert [answers[f"r-{i}"]["type"] for i in range(4)] == ["sent", "sent", "error", "error"]
    for i in (2, 3):
        assert answers[f"r-{i}"]["code"] == "rate_limited"
    limited = await api.send(alice, bob.name, "http too", "h-1")
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert [e["body"] for e in await api.timeline(bob)] == ["r0", "r1"]
    await assert_alive(ws)
    await ws.close()


@overrides(frame_rate=1.0, frame_burst=5)
async def test_frames_over_the_rate_get_rate_limited(api: Api) -> None:
    ws, _ = await connect(api, await api.user())
    for _ in range(8):
        await ws.send({"type": "ping"})
    frames = [await ws.recv() for _ in range(8)]
    assert frames[:5] == [{"type": "pong"}] * 5
    assert all(f["type"] == "error" and f["code"] == "rate_limited" for f in frames[5:])
    await ws.close()


@overrides(frame_rate=1.0, frame_burst=3)
async def test_a_send_refused_by_the_frame_rate_carries_its_client_id(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, alice)
    for i in range(5):
        await ws.send(send_frame(bob.name, f"f{i}", f"f-{i}"))
    answers = await recv_sent(ws, 5)
    refused = [a for a in answers if a["type"] == "error"]
    assert [a["code"] for a in refused] == ["rate_limited", "rate_limited"]
    refs = {a["client_id"] if a["type"] == "sent" else a["ref"] for a in answers}
    assert refs == {f"f-{i}" for i in range(5)}
    await ws.close()


async def resync(api: Api, user: User, after: int, head: int) -> list[dict[str, Any]]:
    """What a client does after a disconnect: reconnect with after= until it reached head."""
    events: list[dict[str, Any]] = []
    for _attempt in range(20):
        ws = await api.ws(user, f"after={after}")
        assert (await hello(ws))["last_seq"] == head
        while after < head:
            msg = await ws.conn.receive(timeout=10.0)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame.get("type") in ("message", "receipt"):
                assert frame["seq"] == after + 1, "gap-free from the start point"
                events.append(frame)
                after = frame["seq"]
        await ws.close()
        if after == head:
            return events
    raise AssertionError(f"no resync to {head}: stuck at {after}")


SLOW = {
    "ws_send_buffer_max": 65536,
    "body_max_chars": 60_000,
    "send_rate": 100_000.0,
    "send_burst": 100_000,
}


async def cut_a_slow_reader(api: Api, alice: User, bob: User) -> int:
    """Send bob big messages while his only connection reads nothing, until the server cuts
    it with 1013; the number of messages sent."""
    slow = await RawWs.open(api.base, f"/v1/ws?token={bob.token}")
    sender, _ = await connect(api, alice)
    body = "z" * 50_000
    sent = 0
    while await metric(api, "courier_slow_consumers_total") < 1:
        assert sent < 400, "the slow reader was never cut"
        for _ in range(10):
            await sender.send(send_frame(bob.name, body, f"s-{sent}"))
            sent += 1
        assert all(a["type"] == "sent" for a in await recv_sent(sender, 10))
    assert await slow.close_code() == 1013
    slow.close()
    await sender.close()
    return sent


@overrides(**SLOW)
async def test_a_slow_consumer_is_closed_1013_and_resyncs_with_after(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    sent = await cut_a_slow_reader(api, alice, bob)
    events = await resync(api, bob, 0, sent)
    assert [e["seq"] for e in events] == list(range(1, sent + 1))
    assert [e["client_id"] for e in events] == [f"s-{i}" for i in range(sent)]


@overrides(**SLOW)
async def test_a_reader_that_keeps_up_survives_a_replay_bigger_than_the_buffer(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    count = 200  # 10 MB of backlog: more than the kernel's socket buffers take at once
    sender, _ = await connect(api, alice)
    for i in range(count):
        await sender.send(send_frame(bob.name, "y" * 50_000, f"b-{i}"))
    assert all(a["type"] == "sent" for a in await recv_sent(sender, count, timeout=30.0))
    fresh = await api.ws(bob, "after=0")
    assert (await hello(fresh))["last_seq"] == count
    events = await recv_events(fresh, count, timeout=30.0)
    assert [e["seq"] for e in events] == list(range(1, count + 1))
    await sender.send(send_frame(bob.name, "live after the replay", "live"))
    [live] = await recv_events(fresh, 1)
    assert (live["seq"], live["body"]) == (count + 1, "live after the replay")
    await sender.close()
    await fresh.close()
