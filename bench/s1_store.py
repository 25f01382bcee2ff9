"""S1: store ceiling. Durable appends through the store's writer thread, no sockets; figures
are messages per second and this process's CPU-seconds per 100K messages."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import BODY_SIZE, Result, Settings, per_100k, progress, rnd
from bench.store_load import IN_FLIGHT, append_all, create_users
from courier.adapters.rocks_store import RocksStore
from courier.ports import Store

USERS = 100


def round_robin(names: list[str], count: int) -> Iterator[tuple[str, str]]:
    cycle = itertools.cycle(range(len(names) // 2))
    for _ in range(count):
        k = next(cycle)
        yield names[2 * k], names[2 * k + 1]


async def timed_appends(
    store: Store, names: list[str], count: int, label: str
) -> tuple[int, float, float]:
    """Create `names`, append `count` messages among them with a progress bar; returns
    (stored, seconds, this process's CPU-seconds)."""
    await create_users(store, names, "x")
    with progress() as bar:
        task = bar.add_task(label, total=count)
        cpu0, t0 = time.process_time(), time.perf_counter()
        async with asyncio.timeout(600):
            stored = await append_all(
                store,
                round_robin(names, count),
                "x" * BODY_SIZE,
                on_progress=lambda n: bar.update(task, completed=n),
            )
        return stored, time.perf_counter() - t0, time.process_time() - cpu0


async def run(settings: Settings) -> Result:
    count = 50_000 if settings.quick else 500_000
    names = [f"s1user{i}" for i in range(USERS)]
    with tempfile.TemporaryDirectory(prefix="courier-s1-") as tmp:
        store = RocksStore(str(Path(tmp) / "store"))
        await store.open()
        try:
            stored, seconds, cpu = await timed_appends(store, names, count, "S1 appends")
        finally:
            await store.close()
    return {
        "workload": "S1",
        "msgs": stored,
        "seconds": rnd(seconds),
        "msg_per_s": rnd(stored / seconds, 1),
        "in_flight": IN_FLIGHT,
        "cpu_s": rnd(cpu),
        "cpu_s_per_100k": rnd(per_100k(cpu, stored)),
        "server_cpu_s_per_100k": None,
        "driver_cpu_s": rnd(cpu),
    }
