"""The WebSocket opening handshake (RFC 6455 4.2) of the lean `/v1/ws` path: parse and check a
request head, and write the 101 answer or an HTTP error in the contract's JSON shape."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from urllib.parse import parse_qsl

import msgspec

from courier.domain.errors import CourierError
from courier.transport.errors import error_body

HEAD_MAX = 32 * 1024  # as aiohttp's max_line_size / max_field_size on the rest of the port
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Upgrade(msgspec.Struct, frozen=True):
    """A well-formed GET of /v1/ws; `key` checks that it is a WebSocket upgrade."""

    query: dict[str, str]
    headers: dict[str, str]


def bad(message: str, status: int = 400, code: str = "bad_request") -> CourierError:
    return CourierError(code, message, status)


def parse(head: bytes) -> Upgrade:
    """Check a request head (everything before the blank line); raise CourierError if it is
    not a well-formed GET of /v1/ws."""
    try:
        text = head.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise bad("The request line is malformed.") from None
    if version != "HTTP/1.1":
        raise bad("A WebSocket upgrade needs HTTP/1.1.")
    if target.partition("?")[0] != "/v1/ws":
        raise bad("There is nothing at this address.", 404, "not_found")
    if method != "GET":
        raise bad("This method is not allowed here.", 405, "method_not_allowed")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise bad("A header line is malformed.")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise bad("A WebSocket upgrade has no body.")
    try:
        query = dict(parse_qsl(target.partition("?")[2], keep_blank_values=True, errors="strict"))
    except (ValueError, UnicodeDecodeError):
        raise bad("The query string is malformed.") from None
    return Upgrade(query, headers)


def key(upgrade: Upgrade) -> bytes:
    """The client's key, once the request is checked to be a version-13 WebSocket upgrade."""
    headers = upgrade.headers
    if "websocket" not in _tokens(headers.get("upgrade", "")) or "upgrade" not in _tokens(
        headers.get("connection", "")
    ):
        raise bad("This address only serves WebSocket upgrades.")
    if headers.get("sec-websocket-version") != "13":
        raise bad("Only WebSocket version 13 is served.", 426, "upgrade_required")
    value = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(value, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise bad("Sec-WebSocket-Key is not a valid key.") from None
    return value.encode()


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def accept(key: bytes) -> bytes:
    digest = hashlib.sha1(key + _GUID, usedforsecurity=False).digest()
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + base64.b64encode(digest) + b"\r\n\r\n"
    )


def refusal(exc: CourierError) -> bytes:
    """An HTTP error answer; the connection is closed after it."""
    body = error_body(exc.code, exc.message)
    lines = [
        f"HTTP/1.1 {exc.status} {_REASONS.get(exc.status, 'Error')}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if exc.status == 401:
        lines.append("WWW-Authenticate: Bearer")
    if exc.status == 426:
        lines.append("Sec-WebSocket-Version: 13")
    if exc.retry_after is not None:
        lines.append(f"Retry-After: {max(1, math.ceil(exc.retry_after))}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
