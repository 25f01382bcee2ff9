"""Accounts and sessions: argon2id passwords, opaque 256-bit bearer tokens stored as hashes."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from courier.domain.errors import CourierError, unauthorized
from courier.domain.ops import CreateUser, DeleteToken, PutToken
from courier.ports import REVOKE, Broker, Envelope, Store


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
        max_parallel_hashes: int = 4,
    ) -> None:
        self._store = store
        self._broker = broker
        self._hasher = hasher
        # argon2 is deliberately expensive in CPU and memory: bound how many run at once.
        self._hashing = asyncio.Semaphore(max_parallel_hashes)
        self._dummy_hash: str | None = None

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._hashing:
            try:
                return await asyncio.to_thread(self._hasher.verify, password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    async def register(self, username: str, password: str) -> None:
        if await self._store.get_user(username) is not None:
            raise _taken(username)
        password_hash = await self._hash(password)
        created = await self._store.submit(CreateUser(username, password_hash, now_ms()))
        if not created:
            raise _taken(username)

    async def login(self, username: str, password: str) -> str:
        user = await self._store.get_user(username)
        if user is None:
            # Spend the same time as a real check, so response times do not reveal names.
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(secrets.token_hex(16))
            await self._verify(self._dummy_hash, password)
            raise _bad_credentials()
        if not await self._verify(user.password_hash, password):
            raise _bad_credentials()
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
