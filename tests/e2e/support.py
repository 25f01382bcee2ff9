"""Small helpers shared by the end-to-end modules: waiting, metrics, error shapes, raw sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from tests.helpers import Api, Reply, User, Ws

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def assert_error(reply: Reply, status: int, code: str | None = None) -> None:
    """The reply is an error of the contract's shape, with this status (and code)."""
    assert reply.status == status, reply
    assert_error_shape(reply.body)
    if code is not None:
        assert reply.code == code, reply


def assert_error_shape(body: Any) -> None:
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert isinstance(error.get("code"), str) and SNAKE.match(error["code"]), body
    assert isinstance(error.get("message"), str) and error["message"], body


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Poll an async condition until it holds; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition did not hold in time")
        await asyncio.sleep(interval)


async def metric(api: Api, name: str) -> float:
    """The value of an unlabelled sample of /metrics (0 when absent)."""
    r = await api.metrics()
    assert r.status == 200, r
    text = r.body if isinstance(r.body, str) else str(r.body)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def hello(ws: Ws) -> dict[str, Any]:
    frame = await ws.recv()
    assert frame["type"] == "hello", frame
    return frame


async def connect(api: Api, user: User, query: str = "") -> tuple[Ws, dict[str, Any]]:
    """A WebSocket authenticated with ?token, past its hello frame."""
    ws = await api.ws(user, query)
    return ws, await hello(ws)


async def recv_events(ws: Ws, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next `count` timeline events (frames with a seq), skipping other frames."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            frame = await ws.recv(timeout)
            if "seq" in frame and frame.get("type") in ("message", "receipt"):
                out.append(frame)
    return out


async def recv_sent(ws: Ws, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next `count` sent/error answers, skipping other frames."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            frame = await ws.recv(timeout)
            if frame.get("type") in ("sent", "error"):
                out.append(frame)
    return out


async def assert_quiet(ws: Ws, seconds: float = 0.2) -> None:
    """No frame arrives within `seconds` (a ping round trip bounds the wait)."""
    await ws.send({"type": "ping"})
    frame = await ws.recv(seconds + 5.0)
    assert frame == {"type": "pong"}, frame


class RawWs:
    """A WebSocket client on a plain socket with a tiny receive buffer that reads nothing
    unless asked: the slowest reader there is."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @classmethod
    async def open(cls, base: str, path_and_query: str, rcvbuf: int = 4096) -> RawWs:
        parts = urlsplit(base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path_and_query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next frame as (opcode, payload)."""

        async def exactly(n: int) -> bytes:
            return await self.reader.readexactly(n)

        async with asyncio.timeout(timeout):
            b0, b1 = await exactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await exactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await exactly(8))
            return b0 & 0x0F, await exactly(n)

    async def close_code(self, timeout: float = 20.0) -> int:
        """Read frames until the server's close frame; its status code."""
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await self.frame(timeout)
                if opcode == 0x8:
                    (code,) = struct.unpack("!H", payload[:2])
                    return int(code)

    def send(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
    ) -> None:
        """Write one frame exactly as given, hostile ones included."""
        head = bytes([(0x80 if fin else 0) | rsv | opcode])
        n = len(payload)
        bit = 0x80 if mask else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            head += key
        self.writer.write(head + payload)

    def send_json(self, frame: dict[str, Any]) -> None:
        self.send(0x1, json.dumps(frame).encode())

    async def json(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next text frame, decoded; control frames before it are skipped."""
        while True:
            opcode, payload = await self.frame(timeout)
            if opcode == 0x1:
                frame: dict[str, Any] = json.loads(payload)
                return frame
            assert opcode in (0x9, 0xA), (opcode, payload)

    def close(self) -> None:
        self.writer.close()


async def raw_exchange(base: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a new connection; everything the server says until it hangs up."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    finally:
        writer.close()


def upgrade_request(path_and_query: str, **headers: str) -> bytes:
    """A WebSocket upgrade request; keyword headers replace (or, set to "", drop) defaults."""
    fields = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = [f"GET {path_and_query} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items() if v]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
