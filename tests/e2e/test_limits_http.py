"""HTTP bounds against hostile clients: deadlines for heads, bodies and idle keep-alive,
connection caps, deep JSON, malformed requests, and the headers every response carries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import pytest

from courier.server import Server
from courier.transport.http_guard import SECURITY_HEADERS
from tests.e2e.support import assert_error, assert_error_shape, raw_exchange
from tests.helpers import PASSWORD, Api, unique

DEEP = "[" * 1000 + "]" * 1000
JSON_TYPE = {"Content-Type": "application/json"}
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def open_socket(api: Api) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(api.base)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until the server hangs up (a reset after its answer included)."""
    out = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                return out
            if not chunk:
                return out
            out += chunk


def split_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


# ---- deadlines ---------------------------------------------------------------------------
@pytest.mark.parametrize("settings_overrides", [{"http_head_timeout": 1.0}], ids=["head-1s"])
async def test_a_request_head_that_never_ends_gets_408_and_is_closed(api: Api) -> None:
    reader, writer = await open_socket(api)
    writer.write(b"GET / HTTP/1.1\r\n")
    status, headers, body = split_response(await read_all(reader, 5.0))
    assert status == 408 and body["error"]["code"] == "request_timeout", body
    for name, value in SECURITY_HEADERS.items():  # written raw, still like every answer
        assert headers.get(name) == value, name
    writer.close()


@pytest.mark.parametrize("settings_overrides", [{"http_head_timeout": 1.0}], ids=["head-1s"])
async def test_a_head_trickled_byte_by_byte_is_cut_at_the_deadline(api: Api) -> None:
    reader, writer = await open_socket(api)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    answer = asyncio.create_task(read_all(reader, 10.0))
    for byte in request[:30]:  # 30 bytes at 5 a second: 6 s, past the 1 s deadline
        if answer.done():
            break
        with contextlib.suppress(ConnectionError, RuntimeError):  # the server hung up
            writer.write(bytes([byte]))
        await asyncio.sleep(0.2)
    raw = await answer
    assert raw.startswith(b"HTTP/1.1 408"), raw[:60]
    writer.close()


@pytest.mark.parametrize(
    "settings_overrides", [{"http_head_timeout": 1.0, "longpoll_max_wait": 3.0}], ids=["head-1s"]
)
async def test_a_held_long_poll_outlives_the_head_deadline(api: Api) -> None:
    alice = await api.user()
    r = await api.events(alice, 0, wait=2)
    assert r.status == 200 and r.body["events"] == [], r


@pytest.mark.parametrize("settings_overrides", [{"http_body_timeout": 1.0}], ids=["body-1s"])
async def test_a_body_that_stops_arriving_gets_408(api: Api) -> None:
    reader, writer = await open_socket(api)
    writer.write(
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"username":'
    )
    status, _, body = split_response(await read_all(reader, 5.0))
    assert status == 408 and body["error"]["code"] == "request_timeout", body
    writer.close()


# ---- sizes ------------------------------------------------------------------------------
POST_USERS = b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


async def test_a_body_over_the_limit_gets_413_and_the_connection_closes(api: Api) -> None:
    for framing in (
        b"Content-Length: 70000\r\n\r\n" + b"x" * 70000,
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 70000 + b"x" * 70000 + b"\r\n",
    ):
        reader, writer = await open_socket(api)
        writer.write(POST_USERS + framing)
        status, headers, body = split_response(await read_all(reader, 10.0))  # ends: closed
        assert status == 413 and body["error"]["code"] == "payload_too_large", body
        assert headers.get("Connection") == "close"
        writer.close()


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(api: Api) -> None:
    """`Expect: 100-continue` with a Content-Length past the limit: 413 at once, never an
    invitation to send 10 MB."""
    reader, writer = await open_socket(api)
    writer.write(POST_USERS + b"Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n")
    raw = await read_all(reader, 5.0)
    assert raw.startswith(b"HTTP/1.1 413"), raw[:60]
    assert b"100 Continue" not in raw
    writer.close()


async def test_a_body_within_the_limit_is_invited_by_100_continue(api: Api) -> None:
    name = unique("cont")
    body = json.dumps({"username": name, "password": PASSWORD}).encode()
    reader, writer = await open_socket(api)
    writer.write(
        POST_USERS + b"Connection: close\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    status, _, answer = split_response(await read_all(reader, 5.0))
    assert status == 201, answer
    writer.close()


async def test_a_header_past_the_limit_gets_431(api: Api) -> None:
    reader, writer = await open_socket(api)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    status, _, body = split_response(await read_all(reader, 5.0))
    assert status == 431 and body["error"]["code"] == "headers_too_large", body
    writer.close()


@pytest.mark.parametrize(
    "settings_overrides", [{"http_keepalive_timeout": 1.0}], ids=["keepalive-1s"]
)
async def test_an_idle_keep_alive_connection_is_closed(api: Api) -> None:
    reader, writer = await open_socket(api)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await reader.readuntil(b"}")
    assert first.startswith(b"HTTP/1.1 200"), first
    assert await read_all(reader, 5.0) == b""  # closed by the server, nothing more
    writer.close()


# ---- connection caps ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings_overrides", [{"max_connections_per_address": 5}], ids=["per-address-5"]
)
async def test_connections_past_the_per_address_cap_are_refused_with_429(api: Api) -> None:
    held = [await open_socket(api) for _ in range(5)]
    await asyncio.sleep(0.1)
    status, headers, body = split_response(await raw_exchange(api.base, b"", timeout=5.0))
    assert status == 429 and body["error"]["code"] == "too_many_connections", body
    assert headers["Retry-After"]
    held.pop()[1].close()
    await asyncio.sleep(0.2)
    r = await raw_exchange(
        api.base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert r.startswith(b"HTTP/1.1 200"), r[:60]
    for _, writer in held:
        writer.close()


@pytest.mark.parametrize(
    "settings_overrides",
    [{"max_connections_per_address": 2, "trusted_proxies": "127.0.0.0/8"}],
    ids=["proxy-exempt"],
)
async def test_a_trusted_proxy_is_not_capped_per_address(api: Api) -> None:
    held = [await open_socket(api) for _ in range(4)]
    r = await raw_exchange(
        api.base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert r.startswith(b"HTTP/1.1 200"), r[:60]
    for _, writer in held:
        writer.close()


@pytest.mark.parametrize("settings_overrides", [{"max_connections": 4}], ids=["total-4"])
async def test_connections_past_the_total_cap_are_refused_with_503(api: Api) -> None:
    held = [await open_socket(api) for _ in range(4)]
    await asyncio.sleep(0.1)
    status, _, body = split_response(await raw_exchange(api.base, b"", timeout=5.0))
    assert status == 503 and body["error"]["code"] == "server_full", body
    for _, writer in held:
        writer.close()


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/users", "/v1/sessions"])
async def test_deeply_nested_json_is_400_not_500(api: Api, path: str) -> None:
    body = '{"username":"alice","password":"wonderland","z":' + DEEP + "}"
    r = await api.call("POST", path, data=body, headers=JSON_TYPE)
    assert_error(r, 400, "bad_request")


async def test_a_username_with_a_trailing_newline_is_refused(api: Api) -> None:
    name = unique("nl")
    assert (
        await api.call("POST", "/v1/users", json_body={"username": name, "password": PASSWORD})
    ).status == 201
    for twin in (name + "\n", name + "\r\n", name + "\n\n"):
        r = await api.call("POST", "/v1/users", json_body={"username": twin, "password": PASSWORD})
        assert_error(r, 400, "bad_request")


async def test_malformed_http_gets_the_error_shape_and_one_log_line(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Evil: a\x00<script>\r\n\r\n"
    raw = await raw_exchange(api.base, request)
    status, headers, body = split_response(raw)
    assert status == 400
    assert_error_shape(body)
    assert b"<script>" not in raw and b"\x00" not in raw
    assert "aiohttp" not in headers.get("Server", "")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    lines = [r for r in caplog.records if "malformed HTTP" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


# ---- headers and metrics -----------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/static/app.js", "/healthz", "/v1/nowhere"])
async def test_every_response_carries_the_security_headers(api: Api, path: str) -> None:
    r = await api.call("GET", path)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "aiohttp" not in r.headers["Server"] and "Python" not in r.headers["Server"]


async def test_metrics_are_not_on_the_public_port(api: Api) -> None:
    assert_error(await api.call("GET", "/metrics"), 404, "not_found")
    r = await api.metrics()
    assert r.status == 200 and "courier_connections" in r.body


TOKEN = "a-metrics-token-of-some-length"


@pytest.mark.parametrize("settings_overrides", [{"metrics_token": TOKEN}], ids=["token"])
async def test_with_a_metrics_token_the_public_port_serves_metrics_to_its_bearer(
    api: Api, server: Server
) -> None:
    assert_error(await api.call("GET", "/metrics"), 401, "unauthorized")
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert_error(await api.call("GET", "/metrics", headers=wrong), 401, "unauthorized")
    r = await api.call("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200 and "courier_connections" in r.body
