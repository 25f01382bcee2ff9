"""`/v1/ws` through aiohttp's WebSocket: the front for an upgrade that arrives on a keep-alive
connection which already carried HTTP requests (a new connection takes the lean front).
It behaves the same; it costs more memory per idle connection."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from courier.domain.errors import CourierError, unauthorized
from courier.service.accounts import Session
from courier.transport.http_api import int_param
from courier.transport.ws import Connection, WsEndpoint
from courier.transport.ws_frames import POLICY_VIOLATION, PONG


class AiohttpLink:
    __slots__ = ("_endpoint", "_ws")

    def __init__(self, ws: web.WebSocketResponse, endpoint: WsEndpoint) -> None:
        self._ws = ws
        self._endpoint = endpoint

    def close(self, code: int, reason: str) -> None:
        self._endpoint.spawn(self.close_and_wait(code, reason))

    async def close_and_wait(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())


class AiohttpWs:
    def __init__(self, endpoint: WsEndpoint) -> None:
        self.endpoint = endpoint

    async def handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = self.endpoint
        after = int_param(request, "after", None)
        session = await endpoint.query_auth(request.query.get("token"), after)
        ws = web.WebSocketResponse(
            max_msg_size=endpoint.settings.frame_max_bytes + 1,  # the limit itself is fine
            heartbeat=endpoint.settings.heartbeat,
            compress=False,
            decode_text=False,
            timeout=5.0,
            autoping=False,  # pongs go through the connection's bounded, rate-limited queue
        )
        await ws.prepare(request)
        endpoint.metrics.ws_upgrades.labels("aiohttp").inc()
        try:
            if session is None:
                session, after = await self._first_frame_auth(ws, after)
            conn = await endpoint.open(AiohttpLink(ws, endpoint), request.transport, session, after)
        except CourierError as exc:
            await self._refuse(ws, exc)
            return ws
        except _Gone:
            return ws
        try:
            await self._receive(ws, conn)
        finally:
            endpoint.ended(conn)
        return ws

    async def _first_frame_auth(
        self, ws: web.WebSocketResponse, after: int | None
    ) -> tuple[Session, int | None]:
        try:
            async with asyncio.timeout(self.endpoint.settings.auth_timeout):
                msg = await ws.receive()
                while msg.type in (WSMsgType.PING, WSMsgType.PONG):  # unanswered before auth
                    msg = await ws.receive()
        except TimeoutError:
            raise unauthorized("No auth frame arrived in time.") from None
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            raise _Gone
        return await self.endpoint.frame_auth(msg.data, after)

    async def _refuse(self, ws: web.WebSocketResponse, exc: CourierError) -> None:
        frame = self.endpoint.refused(exc)
        with contextlib.suppress(ConnectionError):
            await ws.send_frame(frame, WSMsgType.TEXT)
        await ws.close(code=POLICY_VIOLATION, message=exc.code.encode())

    async def _receive(self, ws: web.WebSocketResponse, conn: Connection) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                conn.handle(msg.data)
            elif msg.type == WSMsgType.BINARY:
                conn.handle_binary()
            elif msg.type == WSMsgType.PING:
                conn.control(PONG, msg.data)
            elif msg.type == WSMsgType.ERROR:
                break


class _Gone(Exception):
    """The client went away before authenticating."""
