"""Accounts and sessions: argon2id passwords, opaque 256-bit bearer tokens stored as hashes.

A token is a session: it remembers when it was created and last used and the user agent
that logged in. Its last use is recorded lazily, at most once per `touch_every_ms` (an hour,
or a tenth of the idle period when that is shorter), so using a token costs no write; a
session unused for longer than the idle period is refused and deleted at its next use (or
when its user lists their sessions). The expiry is therefore exact to about an hour.
Connections held open count as use: `keep_alive` records it for their tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from courier.domain.errors import CourierError, bad_request, rate_limited, unauthorized
from courier.domain.names import valid_username
from courier.domain.ops import CreateUser, DeleteToken, PutToken, TokenRecord, TouchToken
from courier.ports import REVOKE, Broker, Envelope, Store
from courier.service.throttle import AuthThrottle

R = TypeVar("R")
HASH_QUEUE_MAX = 32  # password checks that may wait for a hashing thread; more get 429

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SESSIONS_MAX = 100  # per user: a login past it ends the least recently used session
USER_AGENT_MAX = 256  # code points kept of the User-Agent given at login
_KEEP_ALIVE_CHUNK = 100


class Session(msgspec.Struct, frozen=True):
    """Who is calling: resolved from the bearer token, never from the payload. `device` is
    the session's public id."""

    username: str
    device: str
    token_hash: bytes


class SessionView(msgspec.Struct, frozen=True):
    """One of the caller's sessions as `GET /v1/sessions` lists it."""

    id: str
    created_ts: int
    last_used_ts: int
    user_agent: str
    current: bool


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def now_ms() -> int:
    return int(time.time() * 1000)


class Accounts:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        hasher: PasswordHasher,
        *,
        throttle: AuthThrottle | None = None,
        max_parallel_hashes: int | None = None,
        session_idle_days: float = 30.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._broker = broker
        self._hasher = hasher
        self.clock = clock  # milliseconds since the epoch; tests move it
        self.idle_days = session_idle_days
        self.idle_ms = int(session_idle_days * DAY_MS)  # 0: sessions never expire
        self.touch_every_ms = min(HOUR_MS, self.idle_ms // 10) if self.idle_ms else HOUR_MS
        self._touching: set[bytes] = set()
        self._throttle = throttle or AuthThrottle()
        # argon2 is deliberately expensive in CPU and memory: it runs on threads of its own
        # (never the event loop's, never the default executor the store reads may use), at
        # most one per core, and only a bounded number of checks may queue for them.
        workers = max_parallel_hashes or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="argon2")
        self._queued = 0
        self._dummy_hash: str | None = None

    async def _run_hash(self, fn: Callable[..., R], *args: str) -> R:
        if self._queued >= HASH_QUEUE_MAX:
            raise rate_limited(1.0)
        self._queued += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, fn, *args)
        finally:
            self._queued -= 1

    async def _hash(self, password: str) -> str:
        return await self._run_hash(self._hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return await self._run_hash(self._hasher.verify, password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def register(self, username: str, password: str, address: str = "") -> None:
        """`address` is the caller's source address, for the throttle ("" = not throttled)."""
        if not valid_username(username):
            raise bad_request("The username must match ^[a-z0-9][a-z0-9_.-]{2,31}$.")
        self._throttle.register(address)
        if await self._store.get_user(username) is not None:
            raise _taken(username)
        password_hash = await self._hash(password)
        created = await self._store.submit(CreateUser(username, password_hash, now_ms()))
        if not created:
            raise _taken(username)

    async def login(
        self, username: str, password: str, address: str = "", *, user_agent: str = ""
    ) -> str:
        took = self._throttle.login(address, username)
        user = await self._store.get_user(username)
        if user is None:
            # Spend the same time as a real check, so response times do not reveal names.
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(secrets.token_hex(16))
            await self._verify(self._dummy_hash, password)
            raise _bad_credentials()
        if not await self._verify(user.password_hash, password):
            raise _bad_credentials()
        self._throttle.succeeded(address, username, took)
        token = secrets.token_urlsafe(32)  # 256 random bits
        token_hash = hash_token(token)
        device = token_hash[:8].hex()  # the session id: public, and no use as a token
        agent = clean_user_agent(user_agent)
        await self._store.submit(PutToken(token_hash, username, device, self.clock(), agent))
        with contextlib.suppress(CourierError):  # the login stands; the next one bounds them
            await self._bound_sessions(username)
        return token

    async def _bound_sessions(self, username: str) -> None:
        """Keep a user's sessions few, so that every read of them is short: past
        SESSIONS_MAX, a login ends the least recently used ones (and any expired)."""
        rows = await self._store.sessions(username, 2 * SESSIONS_MAX)
        if len(rows) <= SESSIONS_MAX:
            return
        now = self.clock()
        live = [r for r in rows if not self._expired(r.last_used, now)]
        ended = [r for r in rows if self._expired(r.last_used, now)] + live[SESSIONS_MAX:]
        for row in ended:
            with contextlib.suppress(CourierError):  # the next login tries again
                await self._end(username, row.id, row.token_hash)

    async def authenticate(self, token: str | None) -> Session:
        if not token or len(token) > 256:
            raise unauthorized()
        token_hash = hash_token(token)
        record = await self._store.get_token(token_hash)
        if record is None:
            raise unauthorized("The token is invalid or has been revoked.")
        now = self.clock()
        if self._expired(record.last_used, now):
            with contextlib.suppress(CourierError):  # refused either way; a later use retries
                await self._end(record.username, record.device, token_hash)
            raise unauthorized(
                f"The session expired after {self.idle_days:g} days without use; log in again."
            )
        if now - record.last_used >= self.touch_every_ms:  # also a last use never recorded
            await self._touch(token_hash, record, now)
        return Session(record.username, record.device, token_hash)

    def _expired(self, last_used: int, now: int) -> bool:
        # A token written before last uses were recorded (0) counts as used now.
        return bool(self.idle_ms and last_used and now - last_used > self.idle_ms)

    async def _touch(self, token_hash: bytes, record: TokenRecord, now: int) -> None:
        """Record a use; one write at a time per token, and a failure costs the caller
        nothing (the next use tries again)."""
        if token_hash in self._touching:
            return
        self._touching.add(token_hash)
        try:
            unlisted = record.created if not record.last_used else 0
            op = TouchToken(token_hash, record.username, record.device, now, unlisted)
            await self._store.submit(op)
        except CourierError as exc:
            log.warning("recording the use of a session failed: %s", exc.message)
        finally:
            self._touching.discard(token_hash)

    async def keep_alive(self, token_hashes: Iterable[bytes]) -> int:
        """Tokens whose connections are open are in use: record it for those not recorded
        within `touch_every_ms`. Returns how many were recorded."""
        todo = list(dict.fromkeys(token_hashes))
        touched = 0
        for i in range(0, len(todo), _KEEP_ALIVE_CHUNK):
            chunk = todo[i : i + _KEEP_ALIVE_CHUNK]
            records = await asyncio.gather(*(self._store.get_token(h) for h in chunk))
            now = self.clock()
            stale = [
                (h, r)
                for h, r in zip(chunk, records, strict=True)
                if r is not None and now - r.last_used >= self.touch_every_ms
            ]
            await asyncio.gather(*(self._touch(h, r, now) for h, r in stale))
            touched += len(stale)
        return touched

    async def run_keep_alive(self, live: Callable[[], Iterable[bytes]]) -> None:
        """Forever: every `touch_every_ms`, record the use of the tokens `live` names."""
        while True:
            await asyncio.sleep(max(self.touch_every_ms / 1000, 0.05))
            try:
                await self.keep_alive(live())
            except Exception:
                log.exception("recording the use of live sessions failed; next round")

    async def sessions(self, session: Session) -> list[SessionView]:
        """The caller's sessions, most recently used first; expired ones are deleted."""
        now = self.clock()
        rows = await self._store.sessions(session.username, SESSIONS_MAX)
        out: list[SessionView] = []
        for row in rows:
            if self._expired(row.last_used, now):
                with contextlib.suppress(CourierError):
                    await self._end(session.username, row.id, row.token_hash)
                continue
            current = row.id == session.device
            out.append(SessionView(row.id, row.created, row.last_used, row.user_agent, current))
        return out

    async def end_session(self, session: Session, session_id: str) -> None:
        """End one of the caller's sessions, as its own logout would."""
        row = await self._store.get_session(session.username, session_id)
        if row is None:
            raise unknown_session()
        await self._end(session.username, session_id, row.token_hash)

    async def logout(self, session: Session) -> None:
        await self._end(session.username, session.device, session.token_hash)

    async def _end(self, username: str, session_id: str, token_hash: bytes) -> None:
        await self._store.submit(DeleteToken(token_hash, username, session_id))
        # Every node closes the live connections that used this token.
        self._broker.publish(Envelope(username, REVOKE, data=token_hash))


def clean_user_agent(raw: str) -> str:
    """At most USER_AGENT_MAX printable characters: the header is any bytes a client sent."""
    kept = raw[:USER_AGENT_MAX].encode("utf-8", "replace").decode()
    return "".join(c if c.isprintable() else " " for c in kept).strip()


def _taken(username: str) -> CourierError:
    return CourierError("username_taken", f"The username {username!r} is taken.", 409)


def unknown_session() -> CourierError:
    return CourierError("unknown_session", "You have no session with this id.", 404)


def _bad_credentials() -> CourierError:
    return CourierError("invalid_credentials", "Wrong username or password.", 401)
