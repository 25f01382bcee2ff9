"""Durable appends straight into the embedded store, with a fixed number in flight."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from courier.domain.ids import IdGenerator
from courier.domain.ops import AppendMessage, CreateUser
from courier.ports import Store

IN_FLIGHT = 2000


def now_ms() -> int:
    return int(time.time() * 1000)


async def create_users(store: Store, names: Iterable[str], password_hash: str) -> None:
    futures = [store.submit(CreateUser(n, password_hash=password_hash, ts=now_ms())) for n in names]
    await asyncio.gather(*futures)


async def append_all(
    store: Store,
    pairs: Iterable[tuple[str, str]],
    body: str,
    on_progress: Callable[[int], None] | None = None,
    in_flight: int = IN_FLIGHT,
    first_index: int = 0,
) -> int:
    """Append one message per (sender, recipient); returns how many were stored.

    The i-th message has client_id `s<first_index + i>`, so appending the same plan again
    (after an interrupted build) is answered by the store's idempotency, not stored twice."""
    ids = IdGenerator()
    pending: deque[asyncio.Future[Any]] = deque()
    done = 0
    for i, (sender, recipient) in enumerate(pairs):
        ts = now_ms()
        op = AppendMessage(
            sender=sender,
            recipient=recipient,
            body=body,
            client_id=f"s{first_index + i}",
            ts=ts,
            id=ids.new(ts),
        )
        pending.append(store.submit(op))
        if len(pending) >= in_flight:
            await pending.popleft()
            done += 1
            if on_progress is not None and done % 1000 == 0:
                on_progress(done)
    while pending:
        await pending.popleft()
        done += 1
    if on_progress is not None:
        on_progress(done)
    return done
