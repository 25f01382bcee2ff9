"""S1P: the sharded PostgreSQL store alone (two servers started here, synchronous commits on):
durable appends through the per-server writers, no sockets, at batch 100 and at batch 1000."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from bench.common import Result, Settings, per_100k, rnd
from bench.s1_store import timed_appends
from bench.store_load import IN_FLIGHT
from courier.adapters.pg_store import PgStore
from courier.cluster.engines import Proc, remove_postgres_data, start_postgres
from courier.cluster.local import stop_procs

USERS = 100


async def measure(dsns: list[str], batch: int, count: int, prefix: str) -> dict[str, object]:
    store = PgStore(dsns, batch_max=batch)
    await store.open()
    try:
        names = [f"{prefix}{i}" for i in range(USERS)]
        label = f"S1P appends, batch {batch}"
        stored, seconds, cpu = await timed_appends(store, names, count, label)
    finally:
        await store.close()
    return {
        "batch": batch,
        "msgs": stored,
        "seconds": rnd(seconds),
        "msg_per_s": rnd(stored / seconds, 1),
        "client_cpu_s_per_100k": rnd(per_100k(cpu, stored)),
    }


def start_servers(folder: str, procs: list[Proc]) -> None:
    root = Path(folder)
    root.chmod(0o711)  # the servers run as `nobody` under root
    for i in range(2):
        procs.append(start_postgres(root, f"pg{i}"))


@contextlib.asynccontextmanager
async def postgres_servers(prefix: str) -> AsyncIterator[list[str]]:
    """Two PostgreSQL servers for one run, in a folder of their own: their DSNs. Stopped and
    removed, data and all, when the run ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        procs: list[Proc] = []
        try:
            await asyncio.to_thread(start_servers, tmp, procs)
            yield [p.url for p in procs]
        finally:
            stop_procs(procs)
            remove_postgres_data(Path(tmp))


async def run(settings: Settings) -> Result:
    count = 20_000 if settings.quick else 100_000
    async with postgres_servers("courier-s1p-") as dsns:
        phases = [await measure(dsns, batch, count, f"s1p{batch}u") for batch in (100, 1000)]
    return {
        "workload": "S1P",
        "servers": 2,
        "in_flight": IN_FLIGHT,
        "phases": phases,
        "msg_per_s": phases[0]["msg_per_s"],
        "server_cpu_s_per_100k": None,
    }
