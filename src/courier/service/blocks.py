"""Blocking (PROTOCOL.md, "Blocking"): a user stops another's 1:1 messages, receipts,
typing and presence from reaching them. The rules are applied where each of those is
produced (the store's batch for messages and receipts, the delivery service for typing, the
presence service for presence); this holds the list itself."""

from __future__ import annotations

from courier.domain.errors import CourierError, bad_request, unknown_user
from courier.domain.names import valid_username
from courier.domain.ops import SetBlock
from courier.ports import Store
from courier.service.accounts import Session
from courier.service.ratelimit import KeyedLimiter

BLOCKS_MAX = 1000  # users one user may block


class Blocks:
    def __init__(self, store: Store, *, rate: float = 2.0, burst: int = 30) -> None:
        self._store = store
        self._limit = KeyedLimiter(rate, burst)

    async def block(self, session: Session, username: str) -> None:
        await self._check(session, username)
        user = session.username
        if not await self._store.blocked(user, username) and (
            len(await self._store.blocks(user, BLOCKS_MAX)) >= BLOCKS_MAX
        ):
            raise CourierError(
                "too_many_blocks", f"You have blocked {BLOCKS_MAX} users already.", 409
            )
        await self._store.submit(SetBlock(session.username, username, True))

    async def unblock(self, session: Session, username: str) -> None:
        await self._check(session, username)
        await self._store.submit(SetBlock(session.username, username, False))

    async def list(self, session: Session) -> list[str]:
        return await self._store.blocks(session.username, BLOCKS_MAX)

    async def _check(self, session: Session, username: str) -> None:
        if username == session.username:
            raise bad_request("You cannot block yourself.")
        if not valid_username(username) or await self._store.get_user(username) is None:
            raise unknown_user(username)
        self._limit.check(session.username)
