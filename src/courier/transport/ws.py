"""The WebSocket endpoint `/v1/ws`: one connection = one registry subscriber.

Outgoing: every frame goes through `queue`, which batches the frames of one loop tick into a
single socket write. The kernel buffer plus the transport's buffer is the connection's
outgoing queue; when it passes `ws_send_buffer_max` the reader is too slow and is closed
with 1013, to resync by seq on its next connection.

Ordering: a connection delivers a gap-free run of its user's timeline from its start point
(`after`, or the head at hello). Live events that arrive out of order, or while stored events
are being replayed, are held and released in seq order; a gap is filled from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from functools import partial
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from courier.domain.errors import CourierError, unauthorized
from courier.domain.ops import SendResult
from courier.metrics import Metrics
from courier.ports import EVENT, RESYNC, TYPING, Envelope
from courier.service.accounts import Accounts, Session
from courier.service.delivery import EVENTS_LIMIT_MAX, Delivery
from courier.service.ratelimit import TokenBucket
from courier.service.registry import Registry
from courier.transport import wire
from courier.transport.http_api import int_param
from courier.transport.ws_frames import text_frames

log = logging.getLogger(__name__)

HELD_MAX = 10_000  # live events held during a replay before falling back to the store
DRAIN_STALL = 30.0  # seconds a replay may wait on a reader that takes nothing


class WsSettings(msgspec.Struct, frozen=True):
    frame_max_bytes: int
    send_buffer_max: int
    heartbeat: float
    auth_timeout: float
    frame_rate: float
    frame_burst: int


def _error(code: str, message: str, ref: str | None = None) -> bytes:
    return wire.encoder.encode(wire.ErrorFrame(code, message, ref))


class Connection:
    """A live WebSocket of one user's device; the registry hands it envelopes."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        session: Session,
        endpoint: WsEndpoint,
    ) -> None:
        self.ws = ws
        self.user = session.username
        self.token_hash = session.token_hash
        self.conn_id = "ws-" + secrets.token_hex(6)
        self.session = session
        self.last_seq = 0
        self._transport = request.transport
        self._endpoint = endpoint
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._catching_up = True  # until the first replay is done
        self._held: dict[int, Envelope] = {}
        self._held_overflow = False
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._frames = TokenBucket(endpoint.settings.frame_rate, endpoint.settings.frame_burst)

    # ---- outgoing -----------------------------------------------------------------------
    def queue(self, frame: bytes) -> None:
        if self._closed:
            return
        self._pending.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        frames, self._pending = self._pending, []
        transport = self._transport
        if self._closed or not frames or transport is None or transport.is_closing():
            return
        transport.write(text_frames(frames))
        self._endpoint.metrics.hot.events_pushed += len(frames)
        # While catching up, the replay waits for the socket itself (`_drained`); a reader
        # is only too slow when live traffic outruns it.
        if (
            not self._catching_up
            and transport.get_write_buffer_size() > self._endpoint.settings.send_buffer_max
        ):
            self._shed("slow_consumer")

    def _shed(self, reason: str) -> None:
        """Stop serving a reader that fell behind; its next connection resyncs by seq."""
        if self._closed:
            return
        self._endpoint.metrics.slow_consumers.inc()
        self.close(WSCloseCode.TRY_AGAIN_LATER, reason)

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._endpoint.registry.remove(self)
        self._spawn(self.ws.close(code=code, message=reason.encode()))

    async def _drained(self) -> None:
        """Wait until the socket took most of what we wrote (replays can be large)."""
        transport = self._transport
        low = self._endpoint.settings.send_buffer_max // 4
        waited = 0.0
        while (
            transport is not None and not self._closed and transport.get_write_buffer_size() > low
        ):
            if transport.is_closing() or waited > DRAIN_STALL:
                self._shed("slow_consumer")
                return
            await asyncio.sleep(0.005)
            waited += 0.005

    # ---- registry subscriber ------------------------------------------------------------
    def deliver(self, env: Envelope) -> None:
        if self._closed:
            return
        if env.kind == TYPING:
            self.queue(env.data)
            return
        if env.kind == RESYNC:
            self._start_catch_up()
            return
        if env.kind != EVENT or env.seq <= self.last_seq:
            return
        if self._catching_up:
            self._hold(env)
        elif env.seq == self.last_seq + 1:
            self._emit(env)
        else:  # a gap: something is in flight or was lost; the store has it
            self._hold(env)
            self._start_catch_up()

    def _emit(self, env: Envelope) -> None:
        self.last_seq = env.seq
        if env.skip != self.conn_id:  # the sending connection gets `sent` instead
            self.queue(env.data)

    def _hold(self, env: Envelope) -> None:
        if len(self._held) >= HELD_MAX:
            self._held.clear()
            self._held_overflow = True
        else:
            self._held[env.seq] = env

    def revoke(self) -> None:
        self.queue(_error("unauthorized", "This session was logged out."))
        self._flush()
        self.close(WSCloseCode.POLICY_VIOLATION, "logged_out")

    # ---- catching up from the store -----------------------------------------------------
    def _start_catch_up(self) -> None:
        if not self._catching_up:
            self._catching_up = True
            self._spawn(self.catch_up())

    async def catch_up(self) -> None:
        """Replay stored events after last_seq, then release held live events in order.

        If the store cannot be read, the connection is closed (1011): a connection stuck
        holding live events would be worse than a client that reconnects and resyncs.
        """
        try:
            await self._replay()
        except CourierError as exc:
            self.close(WSCloseCode.INTERNAL_ERROR, exc.code)
            return
        except Exception:
            log.exception("replay failed; closing the connection so the client resyncs")
            self.close(WSCloseCode.INTERNAL_ERROR, "resync_failed")
            return
        self._catching_up = False
        held, self._held = self._held, {}
        for seq in sorted(held):
            if not self._catching_up:
                self.deliver(held[seq])
            else:
                self._held[seq] = held[seq]

    async def _replay(self) -> None:
        delivery = self._endpoint.delivery
        while not self._closed:
            self._held_overflow = False
            rows, more = await delivery.events(self.session, self.last_seq, EVENTS_LIMIT_MAX)
            chunk = 0
            for seq, data in rows:
                if seq > self.last_seq:
                    self.last_seq = seq
                    self.queue(data)
                    chunk += len(data)
                    if chunk >= self._endpoint.settings.send_buffer_max // 4:
                        chunk = 0
                        self._flush()
                        await self._drained()
            self._flush()
            await self._drained()
            if not more and not self._held_overflow:
                break

    # ---- incoming -----------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, ConnectionError):
            log.error("connection task failed", exc_info=exc)

    async def handle(self, data: bytes) -> None:
        wait = self._frames.take()
        if wait:
            message = f"Too many frames; retry in {wait:.3f} s."
            self.queue(_error("rate_limited", message, _ref_of(data)))
            return
        try:
            frame = wire.frame_decoder.decode(data)
        except msgspec.DecodeError as exc:
            self.queue(_error("bad_frame", wire.describe(exc), _ref_of(data)))
            return
        if isinstance(frame, wire.SendFrame):
            self._send(frame)
        elif isinstance(frame, wire.PingFrame):
            self.queue(wire.PONG)
        elif isinstance(frame, wire.AuthFrame):
            self.queue(_error("bad_frame", "This connection is already authenticated."))
        else:
            self._spawn(self._guarded(frame))

    def _send(self, frame: wire.SendFrame) -> None:
        try:
            answer = self._endpoint.delivery.send(
                self.session, frame.to, frame.body, frame.client_id, skip=self.conn_id
            )
        except CourierError as exc:
            self.queue(_error(exc.code, exc.message, frame.client_id))
            return
        answer.add_done_callback(partial(self._sent, frame.client_id))

    def _sent(self, client_id: str, answer: asyncio.Future[SendResult]) -> None:
        if answer.cancelled():
            return
        exc = answer.exception()
        if isinstance(exc, CourierError):
            self.queue(_error(exc.code, exc.message, client_id))
        elif exc is not None:
            log.error("send failed", exc_info=exc)
            self.queue(_error("internal_error", "The send failed; retry it.", client_id))
        else:
            r = answer.result()
            self.queue(wire.encoder.encode(wire.Sent(r.client_id, r.id, r.seq, r.ts)))

    async def _guarded(self, frame: wire.ClientFrame) -> None:
        delivery = self._endpoint.delivery
        try:
            if isinstance(frame, wire.AckFrame):
                await delivery.ack(self.session, frame.seq)
            elif isinstance(frame, wire.ReadFrame):
                await delivery.read(self.session, frame.peer, frame.seq)
            elif isinstance(frame, wire.TypingFrame):
                await delivery.typing(self.session, frame.to)
            elif isinstance(frame, wire.SyncFrame):
                await self._sync(frame)
        except CourierError as exc:
            self.queue(_error(exc.code, exc.message))

    async def _sync(self, frame: wire.SyncFrame) -> None:
        after, remaining = frame.after, frame.limit
        limit = min(remaining, EVENTS_LIMIT_MAX)
        rows, more = await self._endpoint.delivery.events(self.session, after, limit)
        for _seq, data in rows:
            self.queue(data)
        last = rows[-1][0] if rows else after
        self.queue(wire.encoder.encode(wire.Synced(last, more)))

    async def shutdown(self) -> None:
        self._closed = True
        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server_shutdown")


def _ref_of(data: bytes) -> str | None:
    """The client_id of a malformed send, when one can be read, so the client can match it."""
    try:
        ref = msgspec.json.decode(data, type=dict[str, Any]).get("client_id")
    except (msgspec.DecodeError, TypeError):
        return None
    return ref if isinstance(ref, str) and len(ref) <= 64 else None


class WsEndpoint:
    def __init__(
        self,
        accounts: Accounts,
        delivery: Delivery,
        registry: Registry,
        metrics: Metrics,
        settings: WsSettings,
    ) -> None:
        self.accounts = accounts
        self.delivery = delivery
        self.registry = registry
        self.metrics = metrics
        self.settings = settings
        self.connections: set[Connection] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        after = int_param(request, "after", None)
        if after is not None and after < 0:
            raise CourierError("bad_request", "after must not be negative.", 400)
        session = None
        if token is not None:
            session = await self.accounts.authenticate(token)  # 401 before the upgrade
            self.registry.ensure_room(session.username)  # 429 before the upgrade
        ws = web.WebSocketResponse(
            max_msg_size=self.settings.frame_max_bytes + 1,  # "at most": the limit itself is fine
            heartbeat=self.settings.heartbeat,
            compress=False,
            decode_text=False,
            timeout=5.0,
        )
        await ws.prepare(request)
        if session is None:
            session, after = await self._first_frame_auth(ws, after)
            if session is None:
                return ws
        conn = Connection(ws, request, session, self)
        try:
            self.registry.add(conn)
        except CourierError as exc:  # lost a race for the last free slot
            await self._refuse(ws, exc)
            return ws
        self.connections.add(conn)
        self.metrics.connections.inc()
        try:
            head = await self.delivery.head(session.username)
            conn.queue(wire.encoder.encode(wire.Hello(session.username, head)))
            conn.last_seq = head if after is None else min(after, head)
            await conn.catch_up()
            await self._receive(ws, conn)
        finally:
            conn.close(WSCloseCode.GOING_AWAY, "")
            self.connections.discard(conn)
            self.metrics.connections.dec()
        return ws

    async def _first_frame_auth(
        self, ws: web.WebSocketResponse, after: int | None
    ) -> tuple[Session | None, int | None]:
        try:
            msg = await ws.receive(timeout=self.settings.auth_timeout)
        except TimeoutError:
            await self._refuse(ws, unauthorized("No auth frame arrived in time."))
            return None, None
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return None, None
        try:
            frame = wire.frame_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            reason = f"The first frame must be auth: {wire.describe(exc)}"
            await self._refuse(ws, unauthorized(reason))
            return None, None
        if not isinstance(frame, wire.AuthFrame):
            await self._refuse(ws, unauthorized("The first frame must be auth."))
            return None, None
        try:
            session = await self.accounts.authenticate(frame.token)
            self.registry.ensure_room(session.username)
        except CourierError as exc:
            await self._refuse(ws, exc)
            return None, None
        return session, frame.after if frame.after is not None else after

    async def _refuse(self, ws: web.WebSocketResponse, exc: CourierError) -> None:
        self.metrics.errors.labels(exc.code).inc()
        with contextlib.suppress(ConnectionError):
            await ws.send_frame(_error(exc.code, exc.message), WSMsgType.TEXT)
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=exc.code.encode())

    async def _receive(self, ws: web.WebSocketResponse, conn: Connection) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await conn.handle(msg.data)
            elif msg.type == WSMsgType.BINARY:
                conn.queue(_error("bad_frame", "Frames must be JSON text frames, not binary."))
            elif msg.type == WSMsgType.ERROR:
                break

    async def shutdown(self) -> None:
        closing = [c.shutdown() for c in list(self.connections)]
        await asyncio.gather(*closing, return_exceptions=True)
