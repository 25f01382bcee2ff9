"""The WebSocket endpoint `/v1/ws`: one connection = one registry subscriber.

Two fronts serve it on the one port and share everything here: the lean protocol
(`ws_lean`, every upgrade that opens a new TCP connection) and aiohttp's WebSocket
(`ws_aiohttp`, an upgrade on a keep-alive connection that already carried HTTP requests).
A front gives the connection a `Link` (how to close it) and its asyncio transport.

Outgoing: every frame, control frames (pongs) included, goes through `queue` or `control`,
which batch the frames of one loop tick into a single socket write. The kernel buffer plus
the transport's buffer is the connection's outgoing queue; when it passes
`ws_send_buffer_max` the reader is too slow and is closed with 1013, to resync by seq on its
next connection. Incoming frames, control frames included, take a token of the connection's
frame bucket; a send waiting for the store takes one of `ws_pending_sends_max` slots.

Ordering: a connection delivers a gap-free run of its user's timeline from its start point
(`after`, or the head at hello). Live events that arrive out of order, or while stored events
are being replayed, are held and released in seq order; a gap is filled from the store.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from functools import partial
from typing import Any, Protocol

import msgspec

from courier.domain.errors import CourierError, unauthorized
from courier.domain.ops import SendResult
from courier.metrics import Metrics
from courier.ports import EVENT, RESYNC, TYPING, Envelope
from courier.service.accounts import Accounts, Session
from courier.service.delivery import EVENTS_LIMIT_MAX, Delivery
from courier.service.ratelimit import TokenBucket
from courier.service.registry import Registry
from courier.transport import wire
from courier.transport.ws_frames import (
    GOING_AWAY,
    INTERNAL_ERROR,
    PING,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    control_frame,
    text_frame,
)

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
    pending_sends_max: int = 1024


def error_frame(code: str, message: str, ref: str | None = None) -> bytes:
    return wire.encoder.encode(wire.ErrorFrame(code, message, ref))


class Link(Protocol):
    """How a front ends its connection: a close frame, then the socket."""

    def close(self, code: int, reason: str) -> None: ...

    async def close_and_wait(self, code: int, reason: str) -> None: ...


class Connection:
    """A live WebSocket of one user's device; the registry hands it envelopes."""

    __slots__ = (
        "_catching_up",
        "_closed",
        "_endpoint",
        "_flush_scheduled",
        "_frames",
        "_held",
        "_held_overflow",
        "_in_flight",
        "_link",
        "_pending",
        "_refusals",
        "_transport",
        "conn_id",
        "last_seq",
        "session",
        "token_hash",
        "user",
    )

    def __init__(
        self,
        link: Link,
        transport: asyncio.Transport | None,
        session: Session,
        endpoint: WsEndpoint,
    ) -> None:
        self._link = link
        self.user = session.username
        self.token_hash = session.token_hash
        self.conn_id = "ws-" + secrets.token_hex(6)
        self.session = session
        self.last_seq = 0
        self._transport = transport
        self._endpoint = endpoint
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._catching_up = True  # until the first replay is done
        self._held: dict[int, Envelope] = {}
        self._held_overflow = False
        self._closed = False
        self._in_flight = 0
        self._frames = TokenBucket(endpoint.settings.frame_rate, endpoint.settings.frame_burst)
        # Frames refused for the rate, at the same rate and burst: a client that keeps sending
        # past twice its budget (for frame_burst / frame_rate seconds, 4 s by default) only
        # burns the server's CPU on parsing, and is closed.
        self._refusals = TokenBucket(endpoint.settings.frame_rate, endpoint.settings.frame_burst)

    # ---- outgoing -----------------------------------------------------------------------
    def queue(self, frame: bytes) -> None:
        """A text frame with this JSON payload."""
        self._queue_framed(text_frame(frame))

    def control(self, opcode: int, payload: bytes) -> None:
        """A control frame the client sent (ping), answered through the bounded queue.
        Past the frame rate it goes unanswered: a ping flood costs the server nothing."""
        if self._over_budget():
            return
        self._queue_framed(control_frame(opcode, payload))

    def _over_budget(self) -> float:
        """Takes a frame token: 0 when the frame is within the rate, else the wait. A flood
        well past the rate closes the connection (1008 `too_many_frames`)."""
        wait = self._frames.take()
        if wait and self._refusals.take():
            self._endpoint.metrics.errors.labels("too_many_frames").inc()
            self.close(POLICY_VIOLATION, "too_many_frames")
        return wait

    def heartbeat(self) -> None:
        """The server's own ping, through the same bounded queue."""
        self._queue_framed(_PING)

    def _queue_framed(self, framed: bytes) -> None:
        if self._closed:
            return
        self._pending.append(framed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        frames, self._pending = self._pending, []
        transport = self._transport
        if self._closed or not frames or transport is None or transport.is_closing():
            return
        transport.write(b"".join(frames))
        self._endpoint.metrics.hot.events_pushed += len(frames)
        # While catching up, the replay waits for the socket itself (`_drained`) and keeps
        # the buffer under half the bound; a reader is too slow when traffic outruns it.
        buffered, bound = transport.get_write_buffer_size(), self._endpoint.settings.send_buffer_max
        if buffered > bound and (not self._catching_up or buffered > 2 * bound):
            self._shed("slow_consumer")

    def _shed(self, reason: str) -> None:
        """Stop serving a reader that fell behind; its next connection resyncs by seq."""
        if self._closed:
            return
        self._endpoint.metrics.slow_consumers.inc()
        self.close(TRY_AGAIN_LATER, reason)

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._endpoint.registry.remove(self)
        self._link.close(code, reason)

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
        self.queue(error_frame("unauthorized", "This session was logged out."))
        self._flush()
        self.close(POLICY_VIOLATION, "logged_out")

    # ---- catching up from the store -----------------------------------------------------
    def _start_catch_up(self) -> None:
        if not self._catching_up:
            self._catching_up = True
            self._endpoint.spawn(self.catch_up())

    async def catch_up(self) -> None:
        """Replay stored events after last_seq, then release held live events in order.

        If the store cannot be read, the connection is closed (1011): a connection stuck
        holding live events would be worse than a client that reconnects and resyncs.
        """
        try:
            await self._replay()
        except CourierError as exc:
            self.close(INTERNAL_ERROR, exc.code)
            return
        except Exception:
            log.exception("replay failed; closing the connection so the client resyncs")
            self.close(INTERNAL_ERROR, "resync_failed")
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
    def handle(self, data: bytes) -> None:
        if self._closed:
            return
        wait = self._over_budget()
        if wait:
            message = f"Too many frames; retry in {wait:.3f} s."
            self.queue(error_frame("rate_limited", message, wire.ref_of(data)))
            return
        try:
            frame = wire.decode(wire.frame_decoder, data)
        except msgspec.DecodeError as exc:
            self.queue(error_frame("bad_frame", wire.describe(exc), wire.ref_of(data)))
            return
        if isinstance(frame, wire.SendFrame):
            self._send(frame)
        elif isinstance(frame, wire.PingFrame):
            self.queue(wire.PONG)
        elif isinstance(frame, wire.AuthFrame):
            self.queue(error_frame("bad_frame", "This connection is already authenticated."))
        else:
            self._endpoint.spawn(self._guarded(frame))

    def handle_binary(self) -> None:
        if self._over_budget():
            return  # over the frame rate: a flood of them is not answered one by one
        self.queue(_BINARY_REFUSED)

    def _send(self, frame: wire.SendFrame) -> None:
        if self._in_flight >= self._endpoint.settings.pending_sends_max:
            message = "Too many sends are waiting to be stored; wait for their sent frames."
            self.queue(error_frame("too_many_pending_sends", message, frame.client_id))
            return
        try:
            answer = self._endpoint.delivery.send(
                self.session,
                frame.to,
                frame.body,
                frame.client_id,
                skip=self.conn_id,
                group=frame.group,
            )
        except CourierError as exc:
            self.queue(error_frame(exc.code, exc.message, frame.client_id))
            return
        self._in_flight += 1
        answer.add_done_callback(partial(self._sent, frame.client_id))

    def _sent(self, client_id: str, answer: asyncio.Future[SendResult]) -> None:
        self._in_flight -= 1
        if answer.cancelled():
            return
        exc = answer.exception()
        if isinstance(exc, CourierError):
            self.queue(error_frame(exc.code, exc.message, client_id))
        elif exc is not None:
            log.error("send failed", exc_info=exc)
            self.queue(error_frame("internal_error", "The send failed; retry it.", client_id))
        else:
            r = answer.result()
            self.queue(wire.encoder.encode(wire.Sent(r.client_id, r.id, r.seq, r.ts)))

    async def _guarded(self, frame: wire.ClientFrame) -> None:
        delivery = self._endpoint.delivery
        try:
            if isinstance(frame, wire.AckFrame):
                await delivery.ack(self.session, frame.seq)
            elif isinstance(frame, wire.ReadFrame):
                await delivery.read(self.session, frame.peer, frame.seq, frame.group)
            elif isinstance(frame, wire.TypingFrame):
                await delivery.typing(self.session, frame.to, frame.group)
            elif isinstance(frame, wire.SyncFrame):
                await self._sync(frame)
        except CourierError as exc:
            self.queue(error_frame(exc.code, exc.message))

    async def _sync(self, frame: wire.SyncFrame) -> None:
        after, remaining = frame.after, frame.limit
        limit = min(remaining, EVENTS_LIMIT_MAX)
        rows, more = await self._endpoint.delivery.events(self.session, after, limit)
        for _seq, data in rows:
            self.queue(data)
        last = rows[-1][0] if rows else after
        self.queue(wire.encoder.encode(wire.Synced(last, more)))

    async def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._endpoint.registry.remove(self)
            await self._link.close_and_wait(GOING_AWAY, "server_shutdown")


_PING = control_frame(PING)
_BINARY_REFUSED = error_frame("bad_frame", "Frames must be JSON text frames, not binary.")


class WsEndpoint:
    """What both fronts share: authentication, opening a connection, and the books."""

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
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
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

    async def query_auth(self, token: str | None, after: int | None) -> Session | None:
        """Checks made before the upgrade (so they can be HTTP errors): a query token, room."""
        if after is not None and after < 0:
            raise CourierError("bad_request", "after must not be negative.", 400)
        if token is None:
            return None
        session = await self.accounts.authenticate(token)  # 401 before the upgrade
        self.registry.ensure_room(session.username)  # 429 before the upgrade
        return session

    async def frame_auth(self, data: bytes, after: int | None) -> tuple[Session, int | None]:
        """The first frame of a connection without a query token must be `auth`."""
        try:
            frame = wire.decode(wire.frame_decoder, data)
        except msgspec.DecodeError as exc:
            raise unauthorized(f"The first frame must be auth: {wire.describe(exc)}") from None
        if not isinstance(frame, wire.AuthFrame):
            raise unauthorized("The first frame must be auth.")
        session = await self.accounts.authenticate(frame.token)
        self.registry.ensure_room(session.username)
        return session, frame.after if frame.after is not None else after

    def refused(self, exc: CourierError) -> bytes:
        """Count a refusal; the error frame to send before closing 1008."""
        self.metrics.errors.labels(exc.code).inc()
        return error_frame(exc.code, exc.message)

    async def open(
        self, link: Link, transport: Any, session: Session, after: int | None
    ) -> Connection:
        """Register the connection, say hello, replay what it missed. Raises CourierError
        when the user lost the race for the last free connection slot."""
        conn = Connection(link, transport, session, self)
        self.registry.add(conn)
        self.connections.add(conn)
        self.metrics.connections.inc()
        try:
            head = await self.delivery.head(session.username)
            conn.queue(wire.encoder.encode(wire.Hello(session.username, head)))
            conn.last_seq = head if after is None else min(after, head)
            await conn.catch_up()
        except BaseException:
            self.ended(conn)
            raise
        return conn

    def ended(self, conn: Connection) -> None:
        if conn in self.connections:
            conn.close(GOING_AWAY, "")
            self.connections.discard(conn)
            self.metrics.connections.dec()

    async def shutdown(self) -> None:
        closing = [c.shutdown() for c in list(self.connections)]
        await asyncio.gather(*closing, return_exceptions=True)
