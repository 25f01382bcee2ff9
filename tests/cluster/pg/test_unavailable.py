"""A server that goes away: 503 meanwhile, unhealthy, and back by itself when it returns."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

import pytest

pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_store import PgStore
from courier.domain.errors import CourierError
from courier.domain.ops import AppendMessage
from tests.cluster.pg.conftest import create_users, users_on


class Proxy:
    """A loopback TCP relay in front of one server that the test can cut and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    def dsn(self, dsn: str) -> str:
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{self.port}"))


def healthy(store: PgStore) -> bool:
    return store.healthy


async def test_open_fails_with_store_unavailable_when_nothing_listens() -> None:
    with pytest.raises(CourierError) as info:
        await PgStore(["postgresql://postgres@127.0.0.1:9/none"]).open()
    assert info.value.code == "store_unavailable" and info.value.status == 503


async def test_writes_and_reads_fail_with_503_then_recover(dsns: list[str]) -> None:
    proxy = Proxy(urlsplit(dsns[1]).port or 0)
    await proxy.start()
    store = PgStore([dsns[0], proxy.dsn(dsns[1])])
    await store.open()
    try:
        (sender,) = users_on(store, 1, 1, "ann")
        (recipient,) = users_on(store, 0, 1, "bob")
        await create_users(store, sender, recipient)
        assert (await store.submit(AppendMessage(sender, recipient, "a", "c1", 1, "i1"))).seq == 1
        assert healthy(store)

        await proxy.cut()
        with pytest.raises(CourierError) as info:
            await store.submit(AppendMessage(sender, recipient, "b", "c2", 1, "i2"))
        assert info.value.code == "store_unavailable" and info.value.status == 503
        assert not healthy(store)
        with pytest.raises(CourierError) as info:
            await store.head(sender)
        assert info.value.status == 503

        await proxy.start()  # the same port again
        for _ in range(50):
            if healthy(store):
                break
            await asyncio.sleep(0.1)
        assert healthy(store), "the writer's probe noticed the server is back"
        retry = await store.submit(AppendMessage(sender, recipient, "b", "c2", 1, "i2"))
        assert not retry.duplicate and retry.seq == 2
        assert await store.head(recipient) == 2, "the recipient half was not written twice"
    finally:
        await store.close()
        await proxy.cut()
