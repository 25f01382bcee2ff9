"""`/v1/ws` on a lean asyncio protocol: the handshake, the frames, the heartbeat and the close
of a WebSocket, with no task and no HTTP machinery left behind once it is open.

An idle connection costs its transport, this protocol object and its `Connection` (a few
KiB, against ~14 KiB for the same connection through aiohttp; docs/performance.md). Frames
are read by `FrameReader` straight from `data_received` and handed to the connection
synchronously; frames out go through the connection's per-tick coalescing queue.

One sweeper task serves the heartbeat of every connection: a connection that sent nothing for
`heartbeat` seconds is pinged, and one that stays silent for half as long again is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from courier.domain.errors import CourierError, unauthorized
from courier.transport import ws_handshake
from courier.transport.admission import Admission
from courier.transport.http_api import parse_int
from courier.transport.ws import Connection, WsEndpoint
from courier.transport.ws_frames import (
    BINARY,
    CLOSE,
    INTERNAL_ERROR,
    PING,
    POLICY_VIOLATION,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    close_frame,
    parse_close,
    text_frame,
)

log = logging.getLogger(__name__)

HEAD, SETUP, OPEN, CLOSING, DONE = range(5)
CLOSE_WAIT = 5.0  # seconds a closing connection waits for the client's close frame


class _Gone(Exception):
    """The client went away (or closed) before the connection opened."""


class LeanWs(asyncio.Protocol):
    __slots__ = (
        "_address",
        "_first",
        "_front",
        "_gone",
        "_head",
        "_inbox",
        "_reader",
        "_state",
        "_timer",
        "_transport",
        "conn",
        "idle",
    )

    def __init__(self, front: LeanFront, address: str) -> None:
        self._front = front
        self._address = address  # counted by the front's admission until the connection ends
        self._transport: asyncio.Transport | None = None
        self._state = HEAD
        self._head = bytearray()
        self._reader = FrameReader(front.endpoint.settings.frame_max_bytes)
        self._inbox: list[tuple[int, bytes]] | None = None  # messages before the open
        self._first: asyncio.Future[bytes] | None = None  # the auth frame, when awaited
        self._timer: asyncio.TimerHandle | None = None
        self._gone: asyncio.Future[None] | None = None
        self.conn: Connection | None = None
        self.idle = 0

    # ---- asyncio protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._front.protocols.add(self)
        self._arm(self._front.endpoint.settings.auth_timeout)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == HEAD:
            self._on_head(data)
            return
        if state == DONE:
            return
        self.idle = 0
        failure = None
        try:
            messages = self._reader.feed(data)
        except FrameError as exc:  # what came before the violation is still handled
            messages, failure = exc.messages, exc
        for opcode, payload in messages:
            if self._state == OPEN:
                self._on_message(opcode, payload)
            elif opcode == CLOSE:
                self._on_close(payload)
            elif self._state == SETUP:
                self._early(opcode, payload)
        if failure is not None:
            self._fail(failure)

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = DONE
        self._disarm()
        self._front.protocols.discard(self)
        self._front.admission.release(self._address)
        if self._first is not None and not self._first.done():
            self._first.set_exception(_Gone())
        if self.conn is not None:
            self._front.endpoint.ended(self.conn)
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    # ---- the handshake and the opening --------------------------------------------------
    def _on_head(self, data: bytes) -> None:
        # Appended and searched from where the last piece ended: a head trickling in byte by
        # byte costs linear time, not quadratic.
        seen = max(len(self._head) - 3, 0)
        self._head += data
        end = self._head.find(b"\r\n\r\n", seen)
        if end < 0 and len(self._head) <= ws_handshake.HEAD_MAX:
            return  # more to come
        if end < 0 or end > ws_handshake.HEAD_MAX:
            self._refuse_http(CourierError("headers_too_large", "The head is too large.", 431))
            return
        head = bytes(self._head)
        self._head = bytearray()
        try:
            upgrade = ws_handshake.parse(head[:end])
        except CourierError as exc:
            self._refuse_http(exc)
            return
        self._state = SETUP
        assert self._transport is not None
        self._transport.pause_reading()
        # Bytes after the head are frames sent before the 101: read once the upgrade is agreed.
        self._front.endpoint.spawn(self._open(upgrade, head[end + 4 :]))

    async def _open(self, upgrade: ws_handshake.Upgrade, early: bytes) -> None:
        endpoint, transport = self._front.endpoint, self._transport
        assert transport is not None
        try:
            after = parse_int(upgrade.query.get("after"), "after", None)
            session = await endpoint.query_auth(upgrade.query.get("token"), after)
            key = ws_handshake.key(upgrade)
        except CourierError as exc:
            self._refuse_http(exc)
            return
        if self._state != SETUP:
            return
        self._write(ws_handshake.accept(key))
        endpoint.metrics.ws_upgrades.labels("lean").inc()
        if early:
            self.data_received(early)
            if self._state != SETUP:  # they broke the protocol
                return
        try:
            if session is None:
                self._arm(endpoint.settings.auth_timeout)
                session, after = await endpoint.frame_auth(await self._first_message(), after)
            self._disarm()
            if self._state != SETUP:
                return
            self.conn = await endpoint.open(self, transport, session, after)
        except CourierError as exc:
            if self._state == SETUP:
                self._write(text_frame(endpoint.refused(exc)))
                self.close(POLICY_VIOLATION, exc.code)
            return
        except _Gone:
            return
        except Exception:
            # Never leave a socket half-open behind a failure: no timer would end it.
            log.exception("opening a WebSocket failed")
            if self._state == SETUP:
                self._write(close_frame(INTERNAL_ERROR, "internal_error"))
            transport.close()
            return
        if self._state != SETUP:  # the client left during the replay
            endpoint.ended(self.conn)
            return
        self._state = OPEN
        inbox, self._inbox = self._inbox or [], None
        for opcode, payload in inbox:
            if self._state == OPEN:
                self._on_message(opcode, payload)
        if self._state == OPEN:
            transport.resume_reading()

    def _first_message(self) -> asyncio.Future[bytes]:
        inbox = self._inbox or []
        for i, (opcode, payload) in enumerate(inbox):
            if opcode in (TEXT, BINARY):
                del inbox[i]
                done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                done.set_result(payload)
                return done
        self._first = asyncio.get_running_loop().create_future()
        assert self._transport is not None
        self._transport.resume_reading()
        return self._first

    def _early(self, opcode: int, payload: bytes) -> None:
        """A message before the open: the awaited auth frame, or one kept for later."""
        first = self._first
        if first is not None and not first.done() and opcode in (TEXT, BINARY):
            self._first = None
            first.set_result(payload)
        else:
            if self._inbox is None:
                self._inbox = []
            self._inbox.append((opcode, payload))
        transport = self._transport
        assert transport is not None
        if not transport.is_closing():
            transport.pause_reading()

    def _refuse_http(self, exc: CourierError) -> None:
        if self._state == DONE:  # the client is gone already
            return
        self._state = CLOSING
        self._front.endpoint.metrics.errors.labels(exc.code).inc()
        assert self._transport is not None
        self._write(ws_handshake.refusal(exc))
        self._transport.close()

    def _write(self, data: bytes) -> None:
        """uvloop raises on a write to a closed transport; a late write is simply dropped."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    # ---- an open connection -------------------------------------------------------------
    def _on_message(self, opcode: int, payload: bytes) -> None:
        conn = self.conn
        assert conn is not None and self._transport is not None
        if opcode == TEXT:
            conn.handle(payload)
        elif opcode == BINARY:
            conn.handle_binary()
        elif opcode == PING:
            conn.control(PONG, payload)  # bounded and rate-limited like every frame
        elif opcode == CLOSE:
            self._on_close(payload)

    def _on_close(self, payload: bytes) -> None:
        """The client closes: answer with its code (RFC 6455 5.5.1) unless we closed first."""
        try:
            code, _ = parse_close(payload)
        except FrameError as exc:
            self._fail(exc)
            return
        transport = self._transport
        assert transport is not None
        if self._state != CLOSING:
            self._write(close_frame(1000 if code == 1005 else code))
        self._state = CLOSING
        transport.close()

    def _fail(self, exc: FrameError) -> None:
        """A protocol violation: say why, serve nothing more, and end the connection.

        The close frame is followed by a half-close, and what the client still sends is read
        and dropped (the reader takes nothing after a violation) until it closes its side,
        or CLOSE_WAIT passes. Closing with the client's bytes unread would reset the
        connection, and a reset can destroy the close frame before the client reads it: a
        browser that sent a message over the limit then sees 1006 instead of 1009."""
        transport = self._transport
        assert transport is not None
        if self._state in (CLOSING, DONE) or transport.is_closing():
            self._state = max(self._state, CLOSING)
            transport.close()
            return
        self._write(close_frame(exc.code, exc.reason))
        self._state = CLOSING
        if self.conn is not None:
            self.conn.close(exc.code, exc.reason)  # it queues nothing more
        transport.write_eof()
        transport.resume_reading()
        self._arm(CLOSE_WAIT)

    def beat(self) -> None:
        """One heartbeat tick (every heartbeat / 2 seconds)."""
        if self._state != OPEN:
            return
        self.idle += 1
        assert self._transport is not None
        if self.idle == 2 and self.conn is not None:
            self.conn.heartbeat()
        elif self.idle > 2:
            self._transport.abort()

    # ---- Link: how the connection ends --------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        if self._state in (CLOSING, DONE):
            return
        self._state = CLOSING
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return
        self._write(close_frame(code, reason))
        transport.resume_reading()  # for the client's close frame
        self._arm(CLOSE_WAIT)

    async def close_and_wait(self, code: int, reason: str) -> None:
        if self._state == DONE:
            return
        self._gone = asyncio.get_running_loop().create_future()
        self.close(code, reason)
        await self._gone

    # ---- timers -------------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        first = self._first
        if self._state == SETUP and first is not None and not first.done():
            self._first = None
            first.set_exception(unauthorized("No auth frame arrived in time."))
        elif self._state in (HEAD, CLOSING) and self._transport is not None:
            self._transport.abort()


class LeanFront:
    """The protocol factory of the lean front, and the heartbeat of its connections."""

    def __init__(self, endpoint: WsEndpoint, admission: Admission) -> None:
        self.endpoint = endpoint
        self.admission = admission
        self.protocols: set[LeanWs] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self, address: str) -> LeanWs:
        return LeanWs(self, address)

    def start(self) -> None:
        if self.endpoint.settings.heartbeat > 0:
            self._sweeper = asyncio.create_task(self._heartbeats(self.endpoint.settings.heartbeat))

    async def _heartbeats(self, heartbeat: float) -> None:
        while True:
            await asyncio.sleep(heartbeat / 2)
            for proto in list(self.protocols):
                proto.beat()

    async def stop(self) -> None:
        """After the endpoint closed its connections: drop what is left (handshakes)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for proto in list(self.protocols):
            transport = proto._transport
            if transport is not None:
                transport.abort()
