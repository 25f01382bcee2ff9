"""The Courier client: one object for the REST calls, the live event stream and reliable sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Literal, Self

import aiohttp

from courier.client.backoff import backoff
from courier.client.errors import AuthError, ConnectionLost, CourierError, RateLimited
from courier.client.events import (
    Conversation,
    Event,
    Group,
    Hello,
    HistoryPage,
    Presence,
    Profile,
    Sent,
    Typing,
)
from courier.client.http import HttpApi
from courier.client.ws import Subscription

log = logging.getLogger(__name__)

Transport = Literal["ws", "longpoll"]
ACK_EVERY = 100  # when the consumer lags, still ack at least this often
_TRANSIENT = (ConnectionLost, aiohttp.ClientError, OSError, TimeoutError)


def new_client_id() -> str:
    """A fresh idempotency key: retries of one send must reuse it, new sends must not."""
    return uuid.uuid4().hex


class Client:
    """A Courier account on one server, used as ``async with Client(url, token) as client:``.

    `events()` holds the live connection while it is iterated; `send()` and the other calls use
    that WebSocket when it is up and plain HTTP otherwise, so they work with or without it.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        transport: Transport = "ws",
        last_seq: int = 0,
        poll_wait: int = 25,
        send_timeout: float = 30.0,
        max_buffer: int = 1000,
    ) -> None:
        if transport not in ("ws", "longpoll"):
            raise ValueError(f"unknown transport {transport!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.username: str | None = None
        self.transport: Transport = transport
        self.last_seq = last_seq
        self.poll_wait = poll_wait
        self.send_timeout = send_timeout
        self.max_buffer = max_buffer
        self._session: aiohttp.ClientSession | None = None
        self._sub: Subscription | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._closed = False
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the live connection and the HTTP session."""
        self._closed = True
        if self._sub is not None:
            await self._sub.close()
            self._sub = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> HttpApi:
        if self._closed:
            raise CourierError("client_closed", "this client has been closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return HttpApi(self._session, self.base_url, self.token)

    @property
    def connected(self) -> bool:
        """True while a WebSocket is open and authenticated."""
        return self._sub is not None and self._sub.conn is not None and self._sub.conn.open

    # -- accounts ----------------------------------------------------------------------------

    @classmethod
    async def register(
        cls, base_url: str, username: str, password: str, **options: object
    ) -> Client:
        """Create an account and return a client logged in to it (close it when done)."""
        client = cls(base_url, **options)  # type: ignore[arg-type]
        try:
            await client._http().register(username, password)
            await client.login(username, password)
        except BaseException:
            await client.close()
            raise
        return client

    async def login(self, username: str, password: str) -> str:
        """Open a session; the token is kept on the client and returned for storing."""
        session = await self._http().login(username, password)
        self.token = session.token
        self.username = session.username
        return session.token

    async def logout(self) -> None:
        """Revoke the token on the server, everywhere it is used."""
        if self._sub is not None:
            await self._sub.close()
        await self._http().logout()
        self.token = None

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self, to: str, body: str, client_id: str | None = None, *, group: str | None = None
    ) -> Sent:
        """Send until the server confirms it stored the message, exactly once.

        Every attempt reuses one ``client_id``, so a retry after a lost answer returns the
        original `Sent` instead of storing a copy. Errors that a retry cannot fix are raised;
        bound the whole effort with ``asyncio.timeout`` if needed.
        """
        client_id = client_id or new_client_id()
        attempt = 0
        while True:
            conn = self._sub.conn if self._sub is not None else None
            try:
                if conn is not None and conn.open:
                    return await conn.send(to, body, client_id, self.send_timeout, group=group)
                return await self._http().send(to, body, client_id, group=group)
            except RateLimited as exc:
                delay = exc.retry_after if exc.retry_after is not None else backoff(attempt)
            except CourierError as exc:
                if not exc.retryable:
                    raise
                delay = backoff(attempt)
            except _TRANSIENT as exc:
                log.debug("send %s: %s; retrying", client_id, exc)
                delay = backoff(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def ack(self, seq: int) -> None:
        """Tell the server this device processed the timeline up to ``seq`` (cumulative)."""
        if await self._frame({"type": "ack", "seq": seq}):
            return
        await self._http().ack(seq)

    async def read(self, peer: str, seq: int) -> None:
        """Mark messages from ``peer`` up to our timeline ``seq`` as read."""
        if await self._frame({"type": "read", "peer": peer, "seq": seq}):
            return
        await self._http().read(peer, seq)

    async def typing(self, to: str) -> bool:
        """Tell ``to`` we are typing; only possible over a live WebSocket, else returns False."""
        return await self._frame({"type": "typing", "to": to})

    # -- profiles ----------------------------------------------------------------------------

    async def me(self) -> Profile:
        """Our username and display name."""
        return await self._http().me()

    async def set_display_name(self, display_name: str) -> Profile:
        """Set our display name (0..64 characters; "" clears it)."""
        return await self._http().set_display_name(display_name)

    async def search_users(self, q: str, limit: int = 10) -> list[Profile]:
        """Users whose username or display name (or a word of it) starts with ``q``."""
        return await self._http().search_users(q, limit)

    async def block(self, username: str) -> None:
        """Stop ``username``'s messages, receipts, typing and presence from reaching us."""
        await self._http().block(username)

    async def unblock(self, username: str) -> None:
        await self._http().unblock(username)

    async def blocks(self) -> list[str]:
        """The users we have blocked."""
        return await self._http().blocks()

    # -- groups ------------------------------------------------------------------------------

    async def create_group(self, name: str, members: list[str]) -> Group:
        """A new group with us as its owner and ``members`` in it."""
        return await self._http().create_group(name, members)

    async def groups(self) -> list[Group]:
        """The groups we are a member of."""
        return await self._http().groups()

    async def group(self, gid: str) -> Group:
        return await self._http().group(gid)

    async def rename_group(self, gid: str, name: str) -> Group:
        return await self._http().rename_group(gid, name)

    async def add_member(self, gid: str, username: str, role: str = "member") -> Group:
        """Add ``username`` (owner or admin only), or give a member another role."""
        return await self._http().add_member(gid, username, role)

    async def remove_member(self, gid: str, username: str) -> None:
        await self._http().remove_member(gid, username)

    async def leave_group(self, gid: str) -> None:
        if self.username is None:
            raise RuntimeError("log in first")
        await self._http().remove_member(gid, self.username)

    async def send_group(self, gid: str, body: str, client_id: str | None = None) -> Sent:
        """Send to every member of a group, exactly once, as `send` does for one user."""
        return await self.send("", body, client_id, group=gid)

    async def read_group(self, gid: str, seq: int) -> None:
        """Mark the group's messages up to our timeline ``seq`` as read."""
        if await self._frame({"type": "read", "group": gid, "seq": seq}):
            return
        await self._http().read(None, seq, group=gid)

    async def typing_group(self, gid: str) -> bool:
        """Tell the group's other members we are typing (over a live WebSocket only)."""
        return await self._frame({"type": "typing", "group": gid})

    async def group_history(
        self, gid: str, before: int | None = None, limit: int = 50
    ) -> HistoryPage:
        """One page of a group's conversation, newest first."""
        return await self._http().group_history(gid, before, limit)

    async def _frame(self, frame: dict[str, object]) -> bool:
        conn = self._sub.conn if self._sub is not None else None
        if conn is None or not conn.open:
            return False
        try:
            await conn.send_frame(frame)
        except ConnectionLost:
            return False
        return True

    # -- reading -----------------------------------------------------------------------------

    async def conversations(self) -> list[Conversation]:
        """Our conversations, most recent first."""
        return await self._http().conversations()

    async def history(self, peer: str, before: int | None = None, limit: int = 50) -> HistoryPage:
        """One page of a conversation, newest first; page on with ``before=page.next_before``."""
        return await self._http().history(peer, before, limit)

    async def events(
        self, *, after: int | None = None, from_now: bool = False, auto_ack: bool = False
    ) -> AsyncGenerator[Event, None]:
        """Our timeline events in seq order, each once, plus typing notices, forever.

        Starts after ``after`` (default `last_seq`), or at the current head with ``from_now``.
        A client has one live stream: starting another ends the previous one.
        Faults are survived by reconnecting and resuming after the last seq received.
        `last_seq` follows what was yielded; ``auto_ack`` acks what was yielded, batched while
        more events are waiting and flushed when the loop ends.
        """
        start = None if from_now else (self.last_seq if after is None else after)
        source = self._poll(start) if self.transport == "longpoll" else self._stream(start)
        acked = self.last_seq
        unacked = False  # something was yielded since the last ack
        try:
            async for event, idle in source:
                if isinstance(event, Typing | Presence):
                    yield event  # ephemeral: no seq
                    continue
                self.last_seq = event.seq
                unacked = True
                yield event
                if auto_ack and (idle or event.seq - acked >= ACK_EVERY):
                    await self._quiet_ack(event.seq)
                    acked, unacked = event.seq, False
        finally:
            try:
                if auto_ack and unacked:
                    await self._quiet_ack(self.last_seq)
            finally:
                with contextlib.suppress(Exception):
                    await source.aclose()

    async def _quiet_ack(self, seq: int) -> None:
        try:
            await self.ack(seq)
        except (CourierError, *_TRANSIENT) as exc:
            log.debug("ack %s failed: %s", seq, exc)  # cumulative: the next ack covers it

    async def _stream(self, start: int | None) -> AsyncGenerator[tuple[Event, bool], None]:
        token = self._require_token()
        if self._sub is not None:
            # One live stream per client: a new loop supersedes an abandoned one.
            await self._sub.close()

        first = True

        def on_hello(hello: Hello) -> None:
            nonlocal first
            self.username = hello.username
            if first and start is None:
                self.last_seq = hello.last_seq  # from_now: the head is where we start
            first = False

        sub = Subscription(
            self._session_for_ws(),
            self.base_url,
            token,
            start,
            max_buffer=self.max_buffer,
            on_hello=on_hello,
            username=self.username,
        )
        self._sub = sub
        sub.start()
        try:
            while (event := await sub.next()) is not None:
                yield event, sub.idle
        finally:
            if self._sub is sub:
                self._sub = None
            await sub.close()

    async def _poll(self, start: int | None) -> AsyncGenerator[tuple[Event, bool], None]:
        api = self._http()
        after = await self._head(api) if start is None else start
        attempt = 0
        while not self._closed:
            try:
                page = await api.events(after, wait=self.poll_wait, limit=self.max_buffer)
            except RateLimited as exc:
                await asyncio.sleep(exc.retry_after or backoff(attempt))
            except CourierError as exc:
                if not exc.retryable:
                    raise
                await asyncio.sleep(backoff(attempt))
            except _TRANSIENT as exc:
                log.debug("poll failed: %s", exc)
                await asyncio.sleep(backoff(attempt))
            else:
                attempt = 0
                fresh = [event for event in page.events if event.seq > after]
                for index, event in enumerate(fresh):
                    after = event.seq
                    yield event, index == len(fresh) - 1 and not page.more
                after = max(after, page.last_seq)
                continue
            attempt += 1

    async def _head(self, api: HttpApi) -> int:
        """The seq of our newest event, for a stream that starts from now."""
        after = 0
        while True:
            page = await api.events(after, wait=0, limit=1000)
            after = max(after, page.last_seq)
            if not page.more:
                self.last_seq = after
                return after

    def _session_for_ws(self) -> aiohttp.ClientSession:
        self._http()
        assert self._session is not None
        return self._session

    def _require_token(self) -> str:
        if not self.token:
            raise AuthError("unauthorized", "log in first", 401)
        return self.token
