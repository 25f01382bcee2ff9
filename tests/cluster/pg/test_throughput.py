"""Group commit throughput at batch 100, printed for the record (not asserted: the number
depends on the machine and its neighbours)."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_store import PgStore
from courier.domain.ops import AppendMessage
from tests.cluster.pg.conftest import create_users, users_on

MESSAGES = 4000


@pytest.mark.parametrize("placement", ["same-server", "cross-server"])
async def test_batch_of_100_throughput(
    dsns: list[str], placement: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = PgStore(dsns, batch_max=100)
    await store.open()
    try:
        left = users_on(store, 0, 50, "left")
        right = users_on(store, 0 if placement == "same-server" else 1, 50, "right")
        await create_users(store, *left, *right)
        ops = [
            AppendMessage(left[i % 50], right[(i * 7) % 50], "hello there", f"c{i}", 1, f"i{i}")
            for i in range(MESSAGES)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*(store.submit(op) for op in ops))
        elapsed = time.perf_counter() - started
        assert not any(r.duplicate for r in results)
        with capsys.disabled():
            print(f"\n{placement}: {MESSAGES / elapsed:,.0f} msg/s at batch 100")
    finally:
        await store.close()
