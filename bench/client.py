"""Lean protocol helpers over aiohttp: accounts, tokens, WebSocket connect, message bodies."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from bench.common import BODY_SIZE, PASSWORD

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

WS_MAX_MSG = 1 << 20


def encode(frame: dict[str, Any]) -> str:
    return _encoder.encode(frame).decode()


def decode(data: str | bytes) -> dict[str, Any]:
    value = _decoder.decode(data)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {data!r}")
    return value


def run_prefix(tag: str) -> str:
    """A fresh username prefix, so every run works on its own accounts."""
    return f"b{secrets.token_hex(4)}{tag.lower()}"


def usernames(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def make_body(seq: int, ts_ns: int) -> str:
    """`seq` and a perf_counter_ns timestamp, padded to BODY_SIZE characters."""
    head = f"{seq:010d} {ts_ns:020d} "
    return head + "x" * (BODY_SIZE - len(head))


def parse_body(body: str) -> tuple[int, int]:
    return int(body[:10]), int(body[11:31])


class ProtocolError(RuntimeError):
    pass


async def _post(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], ok: tuple[int, ...]
) -> dict[str, Any]:
    async with session.post(url, json=payload) as resp:
        text = await resp.text()
        if resp.status not in ok:
            raise ProtocolError(f"POST {url} -> {resp.status}: {text[:300]}")
        return decode(text) if text else {}


async def register(session: aiohttp.ClientSession, base: str, username: str) -> None:
    await _post(
        session, f"{base}/v1/users", {"username": username, "password": PASSWORD}, (201, 409)
    )


async def login(session: aiohttp.ClientSession, base: str, username: str) -> str:
    answer = await _post(
        session, f"{base}/v1/sessions", {"username": username, "password": PASSWORD}, (201,)
    )
    token = answer.get("token")
    if not isinstance(token, str):
        raise ProtocolError(f"no token in {answer!r}")
    return token


async def make_accounts(
    base: str, names: list[str], concurrency: int = 8, on_done: Any = None
) -> dict[str, str]:
    """Register and log in every name; returns username -> token."""
    tokens: dict[str, str] = {}
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(name: str) -> None:
            async with sem:
                await register(session, base, name)
                tokens[name] = await login(session, base, name)
                if on_done is not None:
                    on_done()

        await asyncio.gather(*(one(n) for n in names))
    return tokens


def ws_url(base: str, token: str | None, after: int | None = None) -> str:
    """The WebSocket URL; with a token it goes in the query (`?token=`), else nowhere."""
    url = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/ws"
    query = [] if token is None else [f"token={quote(token)}"]
    if after is not None:
        query.append(f"after={after}")
    return url + ("?" + "&".join(query) if query else "")


async def connect(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    after: int | None = None,
    *,
    first_frame: bool = False,
    hello_timeout: float = 30,
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Open an authenticated WebSocket and read its `hello` frame. The token goes in the URL,
    or with `first_frame` in an `auth` frame sent first, as the web app and the SDK do."""
    url = ws_url(base, None if first_frame else token, after)
    ws = await session.ws_connect(url, autoping=True, heartbeat=None, max_msg_size=WS_MAX_MSG)
    if first_frame:
        try:
            await ws.send_str(encode({"type": "auth", "token": token}))
        except BaseException:
            await ws.close()
            raise
    try:
        msg = await ws.receive(timeout=hello_timeout)
    except BaseException:
        await ws.close()
        raise
    if msg.type != aiohttp.WSMsgType.TEXT:
        await ws.close()
        raise ProtocolError(f"expected hello, got {msg.type!r} {msg.data!r}")
    hello = decode(msg.data)
    if hello.get("type") != "hello":
        await ws.close()
        raise ProtocolError(f"expected hello, got {msg.data!r}")
    return ws, hello


async def close_all(sockets: list[aiohttp.ClientWebSocketResponse], limit_s: float = 15) -> None:
    async def close(ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
            await asyncio.wait_for(ws.close(), limit_s)

    await asyncio.gather(*(close(ws) for ws in sockets))
