"""Held long-poll requests: registry subscribers woken by the first event for their user."""

from __future__ import annotations

import asyncio
import secrets

from courier.ports import EVENT, RESYNC, Envelope


class LongPollWaiter:
    __slots__ = ("conn_id", "token_hash", "user", "woken")

    def __init__(self, user: str, token_hash: bytes) -> None:
        self.user = user
        self.token_hash = token_hash
        self.conn_id = "lp-" + secrets.token_hex(6)
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def deliver(self, envelope: Envelope) -> None:
        if envelope.kind in (EVENT, RESYNC) and not self.woken.done():
            self.woken.set_result(None)

    def revoke(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)

    async def wait(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.shield(self.woken)
        except TimeoutError:
            pass
