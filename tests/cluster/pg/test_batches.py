"""Batched appends (batch 100) within one server and across two: everything is stored once,
in order. Throughput is measured by the benchmark (`python -m bench --workloads S1P`), not
here."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_store import PgStore
from courier.domain.ops import AppendMessage
from tests.cluster.pg.conftest import create_users, users_on

MESSAGES = 2000


@pytest.mark.parametrize("placement", ["same-server", "cross-server"])
async def test_batches_of_100_store_everything_once_in_order(
    dsns: list[str], placement: str
) -> None:
    store = PgStore(dsns, batch_max=100)
    await store.open()
    try:
        left = users_on(store, 0, 20, "left")
        right = users_on(store, 0 if placement == "same-server" else 1, 20, "right")
        await create_users(store, *left, *right)
        ops = [
            AppendMessage(left[i % 20], right[(i * 7) % 20], f"m{i}", f"c{i}", 1, f"i{i}")
            for i in range(MESSAGES)
        ]
        results = await asyncio.gather(*(store.submit(op) for op in ops))
        assert not any(r.duplicate for r in results)
        total = 0
        for user in right:
            rows = await store.events_after(user, 0, MESSAGES)
            assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
            total += len(rows)
        assert total == MESSAGES
        for sender in left:  # each sender's copies are in submission order
            rows = await store.events_after(sender, 0, MESSAGES)
            numbers = [int(data.split(b'"body":"m')[1].split(b'"')[0]) for _, data in rows]
            assert numbers == sorted(numbers)
    finally:
        await store.close()
