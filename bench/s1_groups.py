"""S1G: group fan-out in the sharded PostgreSQL store alone (two servers started here,
synchronous commits on): one group of 1,000 members spread over both servers, 5 senders
sending 100-byte messages; no sockets.

Reports group messages and member-deliveries per second, and what one group message writes:
bytes of WAL and bytes of table and index growth per server, per table.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.common import Result, Settings, progress, rnd
from bench.s1_postgres import postgres_servers
from courier.adapters.pg_store import PgStore
from courier.domain.ops import AppendGroupMessage, CreateGroup, CreateUser

MEMBERS = 1000
SENDERS = 5
BODY = "x" * 100
TABLES = (
    "timeline",
    "group_bodies",
    "dedupe",
    "heads",
    "conversations",
    "group_fanout",
    "group_dedupe",
)


async def sizes(store: PgStore) -> tuple[int, dict[str, int]]:
    """WAL position summed over the servers, and each table's size (heap, indexes, TOAST)."""
    wal, tables = 0, dict.fromkeys(TABLES, 0)
    for server in range(len(store.servers)):
        async with store._conn(server) as conn:
            wal += int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
            for row in await conn.fetch(
                "SELECT relname, pg_total_relation_size(oid) FROM pg_class"
                " WHERE relname = ANY($1::text[]) AND relkind = 'r'",
                list(TABLES),
            ):
                tables[row[0]] += int(row[1])
    return wal, tables


async def measure(dsns: list[str], count: int) -> dict[str, Any]:
    store = PgStore(dsns)
    await store.open()
    try:
        names = [f"s1g{i:04d}" for i in range(MEMBERS)]
        for i in range(0, MEMBERS, 100):
            await asyncio.gather(*(store.submit(CreateUser(n, "x", 1)) for n in names[i : i + 100]))
        gid = "G" + uuid.uuid4().hex
        await store.submit(CreateGroup(gid, "bench", names[0], tuple(names[1:]), 1, MEMBERS))
        senders = names[:SENDERS]

        async def send(sender: str, n: int) -> None:
            op = AppendGroupMessage(sender, gid, BODY, f"{sender}-{n}", int(time.time() * 1000), "")
            await store.submit(op)

        await asyncio.gather(*(send(s, -1) for s in senders))  # warm: plans, pages
        wal0, tables0 = await sizes(store)
        per_sender = count // SENDERS
        with progress() as bar:
            task = bar.add_task("S1G group messages", total=per_sender * SENDERS)

            async def sender_loop(sender: str) -> None:
                for n in range(per_sender):
                    await send(sender, n)
                    bar.advance(task)

            cpu0, t0 = time.process_time(), time.perf_counter()
            async with asyncio.timeout(900):
                await asyncio.gather(*(sender_loop(s) for s in senders))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        wal1, tables1 = await sizes(store)
    finally:
        await store.close()
    sent = per_sender * SENDERS
    return {
        "group_messages": sent,
        "seconds": rnd(seconds),
        "group_msg_per_s": rnd(sent / seconds, 1),
        "member_deliveries_per_s": rnd(sent * MEMBERS / seconds, 1),
        "client_cpu_ms_per_group_message": rnd(cpu * 1000 / sent, 2),
        "wal_bytes_per_group_message": rnd((wal1 - wal0) / sent, 1),
        "table_bytes_per_group_message": {
            t: rnd((tables1[t] - tables0[t]) / sent, 1) for t in TABLES
        },
        "table_bytes_per_group_message_total": rnd(
            sum(tables1[t] - tables0[t] for t in TABLES) / sent, 1
        ),
    }


async def run(settings: Settings) -> Result:
    count = 100 if settings.quick else 500
    async with postgres_servers("courier-s1g-") as dsns:
        figures = await measure(dsns, count)
    return {
        "workload": "S1G",
        "servers": 2,
        "members": MEMBERS,
        "senders": SENDERS,
        "body_bytes": len(BODY),
        **figures,
        "msg_per_s": figures["group_msg_per_s"],
        "server_cpu_s_per_100k": None,
    }
