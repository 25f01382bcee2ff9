"""The delivery service wired to the embedded store and broker, with no sockets at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from courier.adapters.local_broker import LocalBroker
from courier.adapters.rocks_store import RocksStore
from courier.metrics import Metrics
from courier.ports import Envelope
from courier.service.accounts import Accounts, Session
from courier.service.delivery import Delivery
from courier.service.registry import Registry


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
    store: RocksStore
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


async def build_stack(path: Path, **limits: float) -> Stack:
    metrics = Metrics()
    store = RocksStore(str(path), metrics=metrics)
    await store.open()
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


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = await build_stack(tmp_path / "store")
    try:
        yield s
    finally:
        await s.store.close()
