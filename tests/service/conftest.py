"""The delivery service wired to a store and the in-process broker, with no sockets at all.

Every test runs against each store adapter: the embedded RocksDB store and the PostgreSQL
cluster store (two real servers; skipped where they cannot run)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from courier.adapters.local_broker import LocalBroker
from courier.adapters.rocks_store import RocksStore
from courier.metrics import Metrics
from courier.ports import Envelope, Store
from courier.service.accounts import Accounts, Session
from courier.service.delivery import Delivery
from courier.service.registry import Registry
from tests.cluster.pg.servers import pg_cluster

STORE_KINDS = ["rocks", "postgres"]


@dataclass(eq=False)
class Device:
    """A registry subscriber that records what it is handed, as a connection would send it."""

    user: str
    conn_id: str
    token_hash: bytes = b""
    received: list[Envelope] = field(default_factory=list)
    revoked: bool = False

    def deliver(self, envelope: Envelope) -> None:
        self.received.append(envelope)

    def revoke(self) -> None:
        self.revoked = True


@dataclass
class Stack:
    store: Store
    broker: LocalBroker
    registry: Registry
    accounts: Accounts
    delivery: Delivery
    metrics: Metrics

    async def user(self, name: str) -> Session:
        await self.accounts.register(name, "password1")
        return await self.accounts.authenticate(await self.accounts.login(name, "password1"))

    def device(self, session: Session, conn_id: str) -> Device:
        dev = Device(session.username, conn_id, session.token_hash)
        self.registry.add(dev)
        return dev


async def open_store(path: Path, kind: str, metrics: Metrics) -> Store:
    """A store of `kind` keyed by `path`: opening it again on the same path sees the same data."""
    store: Store
    if kind == "postgres":
        from courier.adapters.pg_store import PgStore  # needs asyncpg: only when asked for

        store = PgStore(await pg_cluster().databases(str(path)), metrics=metrics)
    else:
        store = RocksStore(str(path), metrics=metrics)
    await store.open()
    return store


async def build_stack(path: Path, kind: str = "rocks", **limits: float) -> Stack:
    metrics = Metrics()
    store = await open_store(path, kind, metrics)
    broker = LocalBroker()
    registry = Registry(broker, metrics, int(limits.get("max_connections", 32)))
    await broker.start(registry.dispatch)
    accounts = Accounts(store, broker, PasswordHasher(time_cost=1, memory_cost=8192))
    delivery = Delivery(
        store,
        broker,
        metrics,
        body_max_chars=int(limits.get("body_max_chars", 4096)),
        send_rate=limits.get("send_rate", 1e6),
        send_burst=int(limits.get("send_burst", 1e6)),
        typing_rate=limits.get("typing_rate", 1e6),
        typing_burst=int(limits.get("typing_burst", 1e6)),
    )
    return Stack(store, broker, registry, accounts, delivery, metrics)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "postgres":
        pg_cluster()  # skips here when PostgreSQL cannot run
    return kind


@pytest.fixture
async def stack(tmp_path: Path, store_kind: str) -> AsyncIterator[Stack]:
    s = await build_stack(tmp_path / "store", store_kind)
    try:
        yield s
    finally:
        await s.store.close()
