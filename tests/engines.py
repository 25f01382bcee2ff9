"""The cluster's engines for tests (NATS, two PostgreSQL servers, Redis), started once per test
session with the same launcher as `courier cluster up`, and a fresh set of databases per test.

With COURIER_TEST_BACKEND=cluster the `server` fixture runs every end-to-end test against the
cluster adapters (PostgreSQL store, NATS broker, Redis cache) instead of the embedded ones.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis

from courier.cluster.engines import (
    Proc,
    remove_postgres_data,
    start_nats,
    start_postgres,
    start_redis,
)
from courier.cluster.local import stop_procs

BACKEND = os.environ.get("COURIER_TEST_BACKEND", "embedded")
_numbers = itertools.count(1)


class Engines:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="courier-engines-"))
        self.procs: list[Proc] = []

    def start(self) -> Engines:
        self.procs.append(start_nats(self.dir))
        self.procs.append(start_postgres(self.dir, "pg0"))
        self.procs.append(start_postgres(self.dir, "pg1"))
        self.procs.append(start_redis(self.dir))
        return self

    def url(self, name: str) -> str:
        return next(p.url for p in self.procs if p.name == name)

    @property
    def postgres(self) -> list[str]:
        return [p.url for p in self.procs if p.name.startswith("pg")]

    async def fresh(self) -> dict[str, Any]:
        """Settings for a server on new, empty databases and an empty Redis."""
        name = f"t{os.getpid()}_{next(_numbers)}"
        dsns = []
        for dsn in self.postgres:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            dsns.append(dsn.rsplit("/", 1)[0] + "/" + name)
        client = redis.Redis.from_url(self.url("redis"))
        await client.flushall()
        await client.aclose()
        return {
            "store": "postgres",
            "postgres_servers": ",".join(dsns),
            "broker": "nats",
            "nats_url": self.url("nats"),
            "cache": "redis",
            "redis_url": self.url("redis"),
        }

    def stop(self) -> None:
        stop_procs(self.procs)
        remove_postgres_data(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
