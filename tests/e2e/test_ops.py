"""Operations: health, metrics, the OpenAPI document and the error shape of every failure."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.support import (
    assert_error,
    assert_error_shape,
    connect,
    eventually,
    metric,
    recv_events,
)
from tests.helpers import Api, unique

CONTRACT_PATHS = {
    "/v1/users": {"post"},
    "/v1/sessions": {"post", "get"},
    "/v1/sessions/current": {"delete"},
    "/v1/sessions/{id}": {"delete"},
    "/v1/messages": {"post"},
    "/v1/events": {"get"},
    "/v1/ack": {"post"},
    "/v1/read": {"post"},
    "/v1/conversations": {"get"},
    "/v1/conversations/{peer}/messages": {"get"},
    "/healthz": {"get"},
    "/metrics": {"get"},
    "/v1/ws": {"get"},
}

METRICS = [
    "courier_connections",
    "courier_longpolls_held",
    "courier_messages_sent_total",
    "courier_send_to_push_seconds",
    "courier_store_batch_size",
    "courier_store_commit_seconds",
]


async def test_healthz_is_200_json(api: Api) -> None:
    r = await api.call("GET", "/healthz")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.body["status"] == "ok"


async def test_metrics_is_prometheus_text_with_the_courier_series(api: Api) -> None:
    r = await api.metrics()
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    text: str = r.body
    samples = [line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"]
    for name in METRICS[:3]:
        assert name in samples, name
    for histogram in METRICS[3:]:
        assert f"{histogram}_bucket{{" in text and f"{histogram}_count " in text


async def test_metrics_follow_the_traffic(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    ws, _ = await connect(api, bob)
    assert await metric(api, "courier_connections") == 1
    poll = asyncio.create_task(api.events(alice, 0, wait=10))

    async def held() -> bool:
        return await metric(api, "courier_longpolls_held") >= 1

    await eventually(held)
    for i in range(3):
        assert (await api.send(alice, bob.name, f"m{i}", f"c{i}")).status == 201
    await api.send(alice, bob.name, "m0", "c0")  # a retry is not a new message
    await recv_events(ws, 3)
    await poll
    assert await metric(api, "courier_messages_sent_total") == 3
    assert await metric(api, "courier_longpolls_held") == 0
    assert await metric(api, "courier_send_to_push_seconds_count") >= 3
    assert await metric(api, "courier_store_batch_size_count") >= 3
    assert await metric(api, "courier_store_commit_seconds_count") >= 3
    await ws.close()

    async def gone() -> bool:
        return await metric(api, "courier_connections") == 0

    await eventually(gone)


async def test_openapi_is_json_listing_every_contract_path(api: Api) -> None:
    r = await api.call("GET", "/openapi.json")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/json")
    doc = r.body
    assert isinstance(doc, dict)
    assert str(doc.get("openapi", "")).startswith("3")
    paths = doc["paths"]
    for path, methods in CONTRACT_PATHS.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    json.dumps(doc)  # plain JSON all the way down


ERRORS: list[tuple[str, str, Any, int, str]] = [
    ("GET", "/v1/nothing-here", None, 404, "not_found"),
    ("GET", "/v1", None, 404, "not_found"),
    ("POST", "/healthz", {}, 405, "method_not_allowed"),
    ("PUT", "/v1/messages", {}, 405, "method_not_allowed"),
    ("PUT", "/v1/users", None, 405, "method_not_allowed"),
    ("DELETE", "/v1/conversations", None, 405, "method_not_allowed"),
    ("POST", "/v1/ws", None, 405, "method_not_allowed"),
    ("GET", "/v1/events", None, 401, "unauthorized"),
    ("POST", "/v1/users", {"username": "x"}, 400, "bad_request"),
    ("POST", "/v1/users", "x" * (70 * 1024), 413, "payload_too_large"),
    ("POST", "/v1/sessions", {"username": "nobody-here", "password": "whatever1"}, 401, ""),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    ERRORS,
    ids=[f"{m} {p} {s}" for m, p, _, s, _ in ERRORS],
)
async def test_errors_have_the_contract_shape(
    api: Api, method: str, path: str, body: Any, status: int, code: str
) -> None:
    r = await api.call(method, path, json_body=body)
    assert_error(r, status, code or None)
    assert r.headers["Content-Type"].startswith("application/json")
    if status == 405:
        assert "Allow" in r.headers


async def test_authenticated_errors_have_the_contract_shape(api: Api) -> None:
    alice = await api.user()
    cases = [
        (await api.send(alice, unique("ghost"), "hi", "c1"), 404, "unknown_user"),
        (await api.send(alice, alice.name, "hi", "c2"), 400, "bad_request"),
        (await api.send(alice, "bob0", "x" * 5000, "c3"), 413, "body_too_long"),
        (await api.call("POST", "/v1/ack", user=alice, json_body={"seq": 1}), 400, "bad_request"),
        (
            await api.call(
                "POST", "/v1/users", json_body={"username": alice.name, "password": "long enough"}
            ),
            409,
            "username_taken",
        ),
        (await api.call("GET", "/v1/events?after=zz", user=alice), 400, "bad_request"),
    ]
    for reply, status, code in cases:
        assert_error(reply, status, code)


async def test_a_missing_static_file_is_a_json_404(api: Api) -> None:
    r = await api.call("GET", "/static/no-such-file.js")
    assert_error(r, 404, "not_found")


async def raw_http(base: str, request: bytes) -> tuple[int, bytes, bytes]:
    """Send raw bytes; the status, the header block and the body of the answer."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/conversations/" + b"a" * 9000 + b"/messages HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
        b"GET /v1/conversations HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n"
        b"Connection: close\r\n\r\n",
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n",
    ],
    ids=["long-url", "long-header", "bad-content-length"],
)
async def test_requests_the_parser_rejects_still_get_the_error_shape(
    api: Api, request_bytes: bytes
) -> None:
    status, head, body = await raw_http(api.base, request_bytes)
    assert 400 <= status < 500
    assert b"application/json" in head.lower()
    assert_error_shape(json.loads(body))
