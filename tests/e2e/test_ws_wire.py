"""RFC 6455 on the wire, against the lean front: fragments, control frames, violations, the
handshake's refusals, the heartbeat and the closing handshake, from a raw socket."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest

from tests.e2e.support import (
    RawWs,
    assert_error_shape,
    eventually,
    metric,
    raw_exchange,
    upgrade_request,
)
from tests.helpers import Api, User

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def overrides(**values: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("settings_overrides", [values], ids=["settings"])


def send(to: str, body: str, client_id: str) -> bytes:
    return json.dumps({"type": "send", "to": to, "body": body, "client_id": client_id}).encode()


async def opened(api: Api, user: User) -> RawWs:
    ws = await RawWs.open(api.base, f"/v1/ws?token={user.token}")
    assert (await ws.json())["type"] == "hello"
    return ws


async def ended(ws: RawWs, timeout: float = 5.0) -> int | None:
    """Read to the end of the stream; the close code the server sent, if any."""
    code = None
    async with asyncio.timeout(timeout):
        while True:
            try:
                opcode, payload = await ws.frame(timeout)
            except asyncio.IncompleteReadError:
                return code
            if opcode == CLOSE:  # answered, as a client does; then the server hangs up
                code = struct.unpack("!H", payload[:2])[0]
                ws.send(CLOSE, payload[:2])


def parse_http(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body) if body else None


# ---- frames --------------------------------------------------------------------------------
async def test_a_fragmented_send_is_one_message(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws = await opened(api, alice)
    data = send(bob.name, "in three parts", "f1")
    ws.send(TEXT, data[:10], fin=False)
    ws.send(CONT, data[10:20], fin=False)
    ws.send(CONT, data[20:])
    sent = await ws.json()
    assert (sent["type"], sent["client_id"], sent["seq"]) == ("sent", "f1", 1)
    ws.close()


async def test_a_ping_between_fragments_is_answered_in_place(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws = await opened(api, alice)
    data = send(bob.name, "split", "f2")
    ws.send(TEXT, data[:5], fin=False)
    ws.send(PING, b"between")
    assert await ws.frame() == (PONG, b"between")
    ws.send(CONT, data[5:])
    assert (await ws.json())["type"] == "sent"
    ws.close()


async def test_a_binary_message_is_a_bad_frame_and_the_connection_stays(api: Api) -> None:
    ws = await opened(api, await api.user())
    ws.send(BINARY, b"\x00\x01")
    error = await ws.json()
    assert (error["type"], error["code"]) == ("error", "bad_frame")
    ws.send_json({"type": "ping"})
    assert await ws.json() == {"type": "pong"}
    ws.close()


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([(TEXT, b"{}", True, 0, False)], id="unmasked"),
        pytest.param([(TEXT, b"{}", True, 0x40, True)], id="reserved-bit"),
        pytest.param([(0x3, b"", True, 0, True)], id="unknown-opcode"),
        pytest.param([(CONT, b"x", True, 0, True)], id="continuation-first"),
        pytest.param([(TEXT, b"{", False, 0, True), (TEXT, b"}", True, 0, True)], id="interleaved"),
        pytest.param([(PING, b"x", False, 0, True)], id="fragmented-control"),
        pytest.param([(PING, b"x" * 126, True, 0, True)], id="long-control"),
        pytest.param([(CLOSE, b"\x03", True, 0, True)], id="one-byte-close"),
        pytest.param([(CLOSE, struct.pack("!H", 999), True, 0, True)], id="bad-close-code"),
        pytest.param([(CLOSE, struct.pack("!H", 1005), True, 0, True)], id="reserved-close"),
    ],
)
async def test_a_protocol_violation_closes_1002(
    api: Api, frames: list[tuple[int, bytes, bool, int, bool]]
) -> None:
    ws = await opened(api, await api.user())
    for opcode, payload, fin, rsv, mask in frames:
        ws.send(opcode, payload, fin=fin, rsv=rsv, mask=mask)
    assert await ended(ws) == 1002
    ws.close()
    assert await api.call("GET", "/healthz") is not None


async def test_a_close_reason_that_is_not_utf8_closes_1007(api: Api) -> None:
    ws = await opened(api, await api.user())
    ws.send(CLOSE, struct.pack("!H", 1000) + b"\xff\xfe")
    assert await ended(ws) == 1007
    ws.close()


@overrides(frame_max_bytes=1000)
async def test_fragments_adding_up_past_the_limit_close_1009(api: Api) -> None:
    ws = await opened(api, await api.user())
    ws.send(TEXT, b" " * 600, fin=False)
    ws.send(CONT, b" " * 600)
    assert await ended(ws) == 1009
    ws.close()


async def test_a_client_close_is_answered_with_its_code_then_the_socket_ends(api: Api) -> None:
    ws = await opened(api, await api.user())
    assert await metric(api, "courier_connections") == 1
    ws.send(CLOSE, struct.pack("!H", 4000) + b"bye")
    assert await ended(ws) == 4000
    ws.close()

    async def gone() -> bool:
        return await metric(api, "courier_connections") == 0

    await eventually(gone)


async def test_frames_sent_with_the_upgrade_request_are_kept_in_order(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    reader, writer = await asyncio.open_connection("127.0.0.1", int(api.base.rsplit(":", 1)[1]))
    ws = RawWs(reader, writer)
    writer.write(upgrade_request("/v1/ws"))
    ws.send_json({"type": "auth", "token": alice.token})
    for i in range(3):
        ws.send(TEXT, send(bob.name, f"early {i}", f"e{i}"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert (await ws.json())["type"] == "hello"
    assert [(await ws.json())["client_id"] for _ in range(3)] == ["e0", "e1", "e2"]
    ws.close()


# ---- UTF-8, and what the server reads around a failure ------------------------------------
@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([b'{"type":"ping","note":"\xff"}'], id="in-a-field-json-skips"),
        pytest.param([b'{"type":"ping"}\xed\xa0\x80'], id="surrogate"),
        pytest.param([b'{"type":"ping","note":"\xc3', b'("}'], id="broken-across-fragments"),
    ],
)
async def test_text_that_is_not_utf8_closes_1007(api: Api, parts: list[bytes]) -> None:
    """RFC 6455 8.1, also where JSON decoding alone would not look (a field it skips)."""
    ws = await opened(api, await api.user())
    for i, part in enumerate(parts):
        ws.send(TEXT if i == 0 else CONT, part, fin=i == len(parts) - 1)
    assert await ended(ws) == 1007
    ws.close()


async def test_a_character_split_across_fragments_is_read_whole(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws = await opened(api, alice)
    data = send(bob.name, "naïve ☃", "u1")
    data = data.replace(b"\\u00ef", "ï".encode()).replace(b"\\u2603", "☃".encode())
    cut = data.index("☃".encode()) + 1
    ws.send(TEXT, data[:cut], fin=False)
    ws.send(CONT, data[cut:])
    assert (await ws.json())["client_id"] == "u1"
    events = (await api.events(bob)).body["events"]
    assert [e["body"] for e in events] == ["naïve ☃"]
    ws.close()


async def test_a_send_before_a_violation_in_the_same_write_is_still_handled(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws = await opened(api, alice)
    ws.send(TEXT, send(bob.name, "just before", "b1"))
    ws.send(PING, b"", rsv=0x40)  # one write with the send: one read on the server
    assert await ended(ws) == 1002
    ws.close()

    async def stored() -> bool:
        return [e["body"] for e in (await api.events(bob)).body["events"]] == ["just before"]

    await eventually(stored)


async def test_bytes_after_a_close_frame_are_not_read(api: Api) -> None:
    ws = await opened(api, await api.user())
    ws.send(CLOSE, struct.pack("!H", 4001))
    ws.writer.write(b"\xff" * 32)  # would be a protocol violation, were it read
    assert await ended(ws) == 4001
    ws.close()


@overrides(frame_max_bytes=1000)
async def test_a_client_still_sending_after_a_violation_gets_the_close_frame(api: Api) -> None:
    """The server reads on (and drops) what follows a violation until the client closes: a
    socket closed with bytes unread is reset, and the reset can lose the close frame."""
    ws = await opened(api, await api.user())
    head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 300_000) + b"mask"
    ws.writer.write(head)
    await asyncio.sleep(0.05)  # the server has failed the connection by now
    for _ in range(20):
        ws.writer.write(b"\x00" * 16_384)
        await ws.writer.drain()  # a reset would raise here
        await asyncio.sleep(0.005)
    assert await ended(ws) == 1009
    ws.close()


# ---- the handshake -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Sec-WebSocket-Version": "8"}, 426, "upgrade_required"),
        ({"Sec-WebSocket-Key": ""}, 400, "bad_request"),
        ({"Sec-WebSocket-Key": "short"}, 400, "bad_request"),
        ({"Upgrade": ""}, 400, "bad_request"),
        ({"Connection": "keep-alive"}, 400, "bad_request"),
        ({"Content-Length": "5"}, 400, "bad_request"),
        ({"Transfer-Encoding": "chunked"}, 400, "bad_request"),
        ({"X-Big": "x" * 40_000}, 431, "headers_too_large"),
    ],
)
async def test_a_bad_upgrade_is_an_http_error_of_the_contract(
    api: Api, headers: dict[str, str], status: int, code: str
) -> None:
    got, answer, body = parse_http(
        await raw_exchange(api.base, upgrade_request("/v1/ws", **headers))
    )
    assert got == status, (got, body)
    assert_error_shape(body)
    assert body["error"]["code"] == code
    assert answer["content-type"].startswith("application/json")
    if status == 426:
        assert answer["sec-websocket-version"] == "13"


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("?token=nonsense", 401, "unauthorized"),
        ("?after=-1", 400, "bad_request"),
        ("?after=abc", 400, "bad_request"),
        ("?after=99999999999999999999999", 400, "bad_request"),
    ],
)
async def test_query_problems_are_refused_before_the_upgrade(
    api: Api, query: str, status: int, code: str
) -> None:
    got, answer, body = parse_http(await raw_exchange(api.base, upgrade_request("/v1/ws" + query)))
    assert (got, body["error"]["code"]) == (status, code), body
    if status == 401:
        assert answer["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("request_line", ["GET /v1/ws HTTP/1.0", "GET /v1/ws  HTTP/1.1"])
async def test_a_malformed_request_line_is_400(api: Api, request_line: str) -> None:
    request = upgrade_request("/v1/ws").replace(b"GET /v1/ws HTTP/1.1", request_line.encode())
    status, _, body = parse_http(await raw_exchange(api.base, request))
    assert status == 400
    assert_error_shape(body)


@pytest.mark.parametrize("path", ["/v1/wsx", "/v1/ws/more"])
async def test_paths_that_only_start_like_the_endpoint_are_not_it(api: Api, path: str) -> None:
    request = upgrade_request(path, Connection="close")  # the HTTP side keeps connections open
    status, _, body = parse_http(await raw_exchange(api.base, request))
    assert status == 404
    assert_error_shape(body)


@overrides(auth_timeout=0.5)
async def test_a_handshake_that_stalls_is_dropped(api: Api) -> None:
    assert await raw_exchange(api.base, b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n") == b""


@overrides(auth_timeout=0.5)
async def test_a_connection_that_says_nothing_is_dropped(api: Api) -> None:
    assert await raw_exchange(api.base, b"") == b""


@overrides(auth_timeout=0.5)
async def test_an_upgrade_without_an_auth_frame_gets_an_error_then_1008(api: Api) -> None:
    ws = await RawWs.open(api.base, "/v1/ws")
    error = await ws.json()
    assert (error["type"], error["code"]) == ("error", "unauthorized")
    assert await ended(ws) == 1008
    ws.close()


# ---- the heartbeat -------------------------------------------------------------------------
@overrides(ws_heartbeat=0.4)
async def test_a_silent_client_is_pinged_then_dropped(api: Api) -> None:
    ws = await opened(api, await api.user())
    assert (await ws.frame(timeout=3.0))[0] == PING
    with pytest.raises(asyncio.IncompleteReadError):
        await ws.frame(timeout=3.0)
    ws.close()


@overrides(ws_heartbeat=0.4)
async def test_a_client_that_answers_pings_stays(api: Api) -> None:
    ws = await opened(api, await api.user())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    pings = 0
    while loop.time() < deadline:
        try:
            opcode, payload = await ws.frame(timeout=deadline - loop.time())
        except TimeoutError:
            break
        assert opcode == PING
        pings += 1
        ws.send(PONG, payload)
    assert pings >= 2
    ws.send_json({"type": "ping"})
    assert await ws.json() == {"type": "pong"}
    ws.close()
