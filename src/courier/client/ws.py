"""The WebSocket half: one socket at a time, kept open across faults, resumed by seq.

A `Subscription` owns a reader task that never blocks on the consumer, so answers to sends
(`sent`) always get through. Timeline events go into a bounded buffer; when it is full, events
are dropped and fetched again later with a `sync` frame, which is safe because the server keeps
them. Only the event with seq = last buffered + 1 is ever buffered, so what the consumer sees is
gap-free, in order and free of duplicates whatever the server replays.

Every connection authenticates with a first `auth` frame, never with a token in the URL, and
every reconnect waits a fully jittered exponential delay (`courier.client.backoff`), so that
clients cut off by one restart do not all come back in the same instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

import aiohttp
import msgspec

from courier.client.backoff import STABLE_AFTER_S, backoff
from courier.client.errors import AuthError, ConnectionLost, CourierError, error_from
from courier.client.events import (
    ErrorFrame,
    Event,
    GroupChange,
    Hello,
    Message,
    Presence,
    Receipt,
    Sent,
    Synced,
    Typing,
    Unknown,
    decode_frame,
)

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # authentication failed: reconnecting will not help
HELLO_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # a dead server must not hold up closing
SYNC_LIMIT = 1000
TICK = 1.0  # seconds between sync retries while behind
SYNC_TIMEOUT = 15.0  # an unanswered sync is given up for a reconnect


def ws_url(base_url: str, after: int | None, user: str | None = None) -> str:
    """The WebSocket endpoint for an HTTP base URL. The token never goes here (URLs end up in
    proxy logs): it goes in the first frame. `u` names the user for a balancer that hashes
    users onto nodes (deploy/nginx.conf); the server ignores it."""
    url = base_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url.removeprefix("https://")
    elif url.startswith("http://"):
        url = "ws://" + url.removeprefix("http://")
    url += "/v1/ws"
    query: dict[str, str | int] = {}
    if after is not None:
        query["after"] = after
    if user:
        query["u"] = user
    if query:
        url += "?" + urlencode(query)
    return url


class WsConnection:
    """One open, authenticated socket and the sends waiting for their `sent`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, hello: Hello) -> None:
        self.ws = ws
        self.hello = hello
        self.pending: dict[str, tuple[asyncio.Future[Sent], str, str]] = {}

    @property
    def open(self) -> bool:
        return not self.ws.closed

    async def send_frame(self, frame: Mapping[str, object]) -> None:
        if self.ws.closed:
            raise ConnectionLost("connection closed")
        try:
            await self.ws.send_str(msgspec.json.encode(frame).decode())
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise ConnectionLost(str(exc)) from exc

    async def send(
        self, to: str, body: str, client_id: str, patience: float, *, group: str | None = None
    ) -> Sent:
        """Send one message (to a user, or to a group) and wait for its `sent`; pipelined
        sends keep their order."""
        entry = self.pending.get(client_id)
        if entry is None:
            future: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
            self.pending[client_id] = (future, group or to, body)
            try:
                target = {"group": group} if group is not None else {"to": to}
                frame = {"type": "send", **target, "body": body, "client_id": client_id}
                await self.send_frame(frame)
            except ConnectionLost:
                self.pending.pop(client_id, None)
                raise
        else:
            future = entry[0]
        try:
            return await asyncio.wait_for(asyncio.shield(future), patience)
        except TimeoutError as exc:
            entry = self.pending.get(client_id)
            if entry is not None and entry[0] is future:
                del self.pending[client_id]  # a retry sends the frame again
            raise ConnectionLost("no answer to send") from exc

    def settle(self, client_id: str, result: Sent | CourierError) -> tuple[str, str] | None:
        """Resolve a waiting send; returns its (to, body) when it was sent on this socket."""
        entry = self.pending.pop(client_id, None)
        if entry is None:
            return None
        future, to, body = entry
        if not future.done():
            if isinstance(result, Sent):
                future.set_result(result)
            else:
                future.set_exception(result)
        return to, body

    def fail_all(self, error: Exception | None = None) -> None:
        """Hand every waiting send an error its caller retries on (same client_id)."""
        for future, _, _ in self.pending.values():
            if not future.done():
                future.set_exception(error or ConnectionLost("connection lost"))
        self.pending.clear()


class Subscription:
    """Keeps a WebSocket open, reconnecting with backoff, and buffers what it delivers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        after: int | None,
        *,
        max_buffer: int = 1000,
        heartbeat: float = 20.0,
        on_hello: Callable[[Hello], None] | None = None,
        username: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._token = token
        self._username = username
        self._rng = rng
        self._max_buffer = max(2, max_buffer)
        self._heartbeat = heartbeat
        self._on_hello = on_hello
        self._buffer: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._buffered = after  # seq of the newest timeline event put into the buffer
        self._seen = after or 0  # newest seq known to exist, buffered or not
        self._more = False  # a sync answer was cut by its limit
        self._sync_in_flight = False
        self._sync_sent = 0.0
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.conn: WsConnection | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="courier-ws")

    async def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def next(self) -> Event | None:
        """The next event, waiting for one; None once closed; raises what ended the stream."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        event = self._buffer.popleft()
        await self._maybe_sync()
        return event

    @property
    def idle(self) -> bool:
        """True when nothing is buffered: the consumer has caught up with what arrived."""
        return not self._buffer

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                try:
                    conn = await self._connect()
                except AuthError:
                    raise
                except (
                    aiohttp.ClientError,
                    OSError,
                    TimeoutError,
                    CourierError,
                    ConnectionLost,
                ) as exc:
                    log.debug("connect failed: %s", exc)
                else:
                    connected_at = time.monotonic()
                    try:
                        await self._serve(conn)
                    finally:
                        self.conn = None
                        self.connected.clear()
                        self._sync_in_flight = False
                        conn.fail_all()
                        await conn.ws.close()
                    if conn.ws.close_code == CLOSE_POLICY:
                        raise AuthError("unauthorized", "the server refused the token", 401)
                    log.debug("connection closed with code %s", conn.ws.close_code)
                    if time.monotonic() - connected_at > STABLE_AFTER_S:
                        attempt = 0  # a flapping server still sees growing delays
                await asyncio.sleep(backoff(attempt, rng=self._rng))
                attempt += 1
        except AuthError as exc:
            self._error = exc
            self._wakeup.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never leave the consumer waiting on a dead task
            log.exception("event stream failed")
            self._error = exc
            self._wakeup.set()

    async def _connect(self) -> WsConnection:
        try:
            ws = await self._session.ws_connect(
                ws_url(self._base_url, self._buffered, self._username),
                heartbeat=self._heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise AuthError("unauthorized", "the server refused the token", 401) from exc
            raise
        try:
            await ws.send_str(msgspec.json.encode({"type": "auth", "token": self._token}).decode())
            hello = await asyncio.wait_for(self._read_hello(ws), HELLO_TIMEOUT)
        except BaseException:
            await ws.close()
            raise
        conn = WsConnection(ws, hello)
        self._username = hello.username
        self._more = False  # the replay after `_buffered` covers everything
        if self._buffered is None:
            self._buffered = hello.last_seq
        self._seen = max(self._seen, hello.last_seq)
        self.conn = conn
        self.connected.set()
        if self._on_hello is not None:
            self._on_hello(hello)
        return conn

    @staticmethod
    async def _read_hello(ws: aiohttp.ClientWebSocketResponse) -> Hello:
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                frame = decode_frame(msg.data)
                if isinstance(frame, Hello):
                    return frame
                if isinstance(frame, ErrorFrame):
                    error = error_from(frame.code, frame.message)
                    if error.retryable or frame.code == "too_many_connections":
                        raise error
                    # Before hello the only other thing to refuse is the token itself.
                    raise AuthError(frame.code, frame.message, 401)
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                if ws.close_code == CLOSE_POLICY:
                    raise AuthError("unauthorized", "the server refused the token", 401)
                raise ConnectionLost("closed before hello")

    async def _serve(self, conn: WsConnection) -> None:
        """Read frames until the socket closes; while behind, wake up to retry the sync."""
        while True:
            try:
                msg = await conn.ws.receive(timeout=TICK if self._behind else None)
            except TimeoutError:
                if self._sync_in_flight and time.monotonic() - self._sync_sent > SYNC_TIMEOUT:
                    log.debug("sync unanswered: reconnecting to replay instead")
                    return
                await self._maybe_sync()
                continue
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return
            frame = decode_frame(msg.data)
            if isinstance(frame, Message | Receipt | GroupChange | Unknown):
                await self._offer(frame)
            elif isinstance(frame, Typing | Presence):
                if len(self._buffer) < self._max_buffer:
                    self._push(frame)
            elif isinstance(frame, Sent):
                await self._on_sent(conn, frame)
            elif isinstance(frame, Synced):
                self._sync_in_flight = False
                self._more = frame.more
                self._seen = max(self._seen, frame.last_seq)
                await self._maybe_sync()
            elif isinstance(frame, ErrorFrame):
                error = error_from(frame.code, frame.message)
                if frame.ref is not None and conn.settle(frame.ref, error):
                    continue
                log.debug("server error frame: %s %s", frame.code, frame.message)
                if frame.code == "rate_limited":
                    # The throttled frame has no ref: it may have been a send or our sync.
                    conn.fail_all(error)
                    self._sync_in_flight = False
                elif self._sync_in_flight and frame.code in ("bad_frame", "bad_request"):
                    return  # maybe our sync was refused: a fresh replay does the same job
            elif frame is None:
                log.debug("ignored frame %.200r", msg.data)

    @property
    def _behind(self) -> bool:
        """Events exist past the buffered seq that only a sync (or a replay) will bring."""
        return self._buffered is not None and (self._seen > self._buffered or self._more)

    async def _on_sent(self, conn: WsConnection, sent: Sent) -> None:
        """Settle the send; its outgoing copy is not pushed to us, so rebuild that event."""
        origin = conn.settle(sent.client_id, sent)
        if origin is None:
            self._seen = max(self._seen, sent.seq)
            await self._maybe_sync()
            return
        to, body = origin
        copy = Message(
            seq=sent.seq,
            id=sent.id,
            from_=conn.hello.username,
            to=to,
            body=body,
            ts=sent.ts,
            client_id=sent.client_id,
        )
        await self._offer(copy)

    async def _offer(self, event: Message | Receipt | GroupChange | Unknown) -> None:
        buffered = self._buffered or 0
        if event.seq <= buffered:
            return  # already buffered or yielded: a replay or our own copy
        self._seen = max(self._seen, event.seq)
        if event.seq == buffered + 1 and len(self._buffer) < self._max_buffer:
            self._buffered = event.seq
            self._push(event)
        else:
            await self._maybe_sync()

    def _push(self, event: Event) -> None:
        self._buffer.append(event)
        self._wakeup.set()

    async def _maybe_sync(self) -> None:
        """Ask for what we dropped, once there is room for a useful share of it."""
        conn = self.conn
        if conn is None or self._sync_in_flight or self._buffered is None:
            return
        if not self._behind:
            return
        room = self._max_buffer - len(self._buffer)
        if room < max(1, self._max_buffer // 4):
            return
        self._sync_in_flight = True
        self._sync_sent = time.monotonic()
        self._more = False
        frame: dict[str, object] = {
            "type": "sync",
            "after": self._buffered,
            "limit": min(room, SYNC_LIMIT),
        }
        try:
            await conn.send_frame(frame)
        except ConnectionLost:
            self._sync_in_flight = False
