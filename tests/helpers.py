"""A lean client that speaks only PROTOCOL.md, for end-to-end tests."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

_names = itertools.count(1)
PASSWORD = "correct horse"


def unique(prefix: str = "user") -> str:
    return f"{prefix}{next(_names):04d}"


@dataclass
class User:
    name: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"]["code"])
        return None


class Api:
    """`front` picks the server's WebSocket front: "lean" when the upgrade opens a new
    connection, "aiohttp" when it reuses a keep-alive connection that carried a request."""

    def __init__(
        self,
        base: str,
        session: aiohttp.ClientSession,
        front: str = "lean",
        metrics: str | None = None,
    ) -> None:
        self.base = base
        self.metrics_base = metrics  # the server's metrics listener
        self.http = session
        self.front = front
        self._keepalive: list[aiohttp.ClientSession] = []

    async def close(self) -> None:
        for session in self._keepalive:
            await session.close()

    async def metrics(self) -> Reply:
        """GET /metrics from the server's metrics listener."""
        assert self.metrics_base is not None, "this server has no metrics listener"
        async with self.http.get(self.metrics_base + "/metrics") as resp:
            return Reply(resp.status, await resp.text(), dict(resp.headers))

    async def call(
        self,
        method: str,
        path: str,
        *,
        user: User | None = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = dict(user.auth) if user else {}
        hdrs.update(headers or {})
        async with self.http.request(
            method, self.base + path, json=json_body, data=data, headers=hdrs
        ) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            return Reply(resp.status, body, dict(resp.headers))

    async def user(self, name: str | None = None) -> User:
        name = name or unique()
        r = await self.call("POST", "/v1/users", json_body={"username": name, "password": PASSWORD})
        assert r.status == 201, r
        r = await self.call(
            "POST", "/v1/sessions", json_body={"username": name, "password": PASSWORD}
        )
        assert r.status == 201, r
        return User(name, r.body["token"])

    async def login(self, name: str) -> User:
        r = await self.call(
            "POST", "/v1/sessions", json_body={"username": name, "password": PASSWORD}
        )
        assert r.status == 201, r
        return User(name, r.body["token"])

    async def send(self, user: User, to: str, body: str, client_id: str) -> Reply:
        return await self.call(
            "POST",
            "/v1/messages",
            user=user,
            json_body={"to": to, "body": body, "client_id": client_id},
        )

    async def events(self, user: User, after: int = 0, **params: Any) -> Reply:
        query = "&".join(f"{k}={v}" for k, v in {"after": after, **params}.items())
        return await self.call("GET", f"/v1/events?{query}", user=user)

    async def timeline(self, user: User) -> list[dict[str, Any]]:
        """Every event of the user's timeline, paging with last_seq."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            r = await self.events(user, after, limit=1000)
            assert r.status == 200, r
            out.extend(r.body["events"])
            after = r.body["last_seq"]
            if not r.body["more"]:
                return out

    async def ws(self, user: User | None = None, query: str = "") -> Ws:
        url = self.base.replace("http", "ws", 1) + "/v1/ws"
        params = []
        if user is not None:
            params.append(f"token={user.token}")
        if query:
            params.append(query)
        if params:
            url += "?" + "&".join(params)
        if self.front == "lean":
            connector = aiohttp.TCPConnector(force_close=True)
            fresh = aiohttp.ClientSession(connector=connector)
            self._keepalive.append(fresh)
            return Ws(await fresh.ws_connect(url, autoping=True))
        reused = aiohttp.ClientSession()
        self._keepalive.append(reused)
        async with reused.get(self.base + "/healthz") as r:
            await r.read()  # leaves an idle keep-alive connection for the upgrade to reuse
        return Ws(await reused.ws_connect(url, autoping=True))


class Ws:
    def __init__(self, conn: aiohttp.ClientWebSocketResponse) -> None:
        self.conn = conn

    async def send(self, frame: dict[str, Any]) -> None:
        await self.conn.send_str(json.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.conn.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def recv_until(self, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first frame matching pred; frames before it are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if pred(frame):
                    return frame

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Wait for the server to close; return (code, reason)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.conn.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                ):
                    return self.conn.close_code, str(msg.extra or "")

    async def close(self) -> None:
        await self.conn.close()
