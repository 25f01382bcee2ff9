"""Accounts and sessions: argon2id passwords, opaque 256-bit bearer tokens stored as hashes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from courier.domain.errors import CourierError, bad_request, rate_limited, unauthorized
from courier.domain.names import valid_username
from courier.domain.ops import CreateUser, DeleteToken, PutToken
from courier.ports import REVOKE, Broker, Envelope, Store
from courier.service.throttle import AuthThrottle

R = TypeVar("R")
HASH_QUEUE_MAX = 32  # password checks that may wait for a hashing thread; more get 429


class Session(msgspec.Struct, frozen=True):
    """Who is calling: resolved from the bearer token, never from the payload."""

    username: str
    device: str
    token_hash: bytes


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
    ) -> None:
        self._store = store
        self._broker = broker
        self._hasher = hasher
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

    async def login(self, username: str, password: str, address: str = "") -> str:
        self._throttle.login(address, username)
        user = await self._store.get_user(username)
        if user is None:
            # Spend the same time as a real check, so response times do not reveal names.
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(secrets.token_hex(16))
            await self._verify(self._dummy_hash, password)
            self._throttle.failed(username)
            raise _bad_credentials()
        if not await self._verify(user.password_hash, password):
            self._throttle.failed(username)
            raise _bad_credentials()
        self._throttle.succeeded(address, username)
        token = secrets.token_urlsafe(32)  # 256 random bits
        token_hash = hash_token(token)
        device = token_hash[:8].hex()
        await self._store.submit(PutToken(token_hash, username, device, now_ms()))
        return token

    async def authenticate(self, token: str | None) -> Session:
        if not token or len(token) > 256:
            raise unauthorized()
        token_hash = hash_token(token)
        record = await self._store.get_token(token_hash)
        if record is None:
            raise unauthorized("The token is invalid or has been revoked.")
        return Session(record.username, record.device, token_hash)

    async def logout(self, session: Session) -> None:
        await self._store.submit(DeleteToken(session.token_hash))
        # Every node closes the live connections that used this token.
        self._broker.publish(Envelope(session.username, REVOKE, data=session.token_hash))


def _taken(username: str) -> CourierError:
    return CourierError("username_taken", f"The username {username!r} is taken.", 409)


def _bad_credentials() -> CourierError:
    return CourierError("invalid_credentials", "Wrong username or password.", 401)
