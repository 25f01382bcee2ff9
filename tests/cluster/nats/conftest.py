"""Fixtures: a real nats-server on a free loopback port per test, and broker nodes on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")

from courier.adapters.nats_broker import NatsBroker, Scheme
from courier.cluster.engines import EngineError, free_port, nats_binary
from courier.metrics import Metrics
from tests.cluster.nats.support import NatsServer, Node

NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
def nats_down(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server that is not running yet (call start() in the test)."""
    try:
        nats_binary()
    except EngineError as exc:
        pytest.skip(str(exc))
    server = NatsServer(tmp_path, free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(nats_down: NatsServer) -> NatsServer:
    nats_down.start()
    return nats_down


@pytest.fixture
async def make_node(nats_down: NatsServer) -> AsyncIterator[NodeFactory]:
    """Starts brokers against the test's nats-server; closes them all at the end."""
    nodes: list[Node] = []

    async def make(node_id: str, scheme: Scheme = "user", reconnect_wait: int = 1) -> Node:
        metrics = Metrics()
        broker = NatsBroker(
            nats_down.url,
            node_id=node_id,
            metrics=metrics,
            scheme=scheme,
            reconnect_wait=reconnect_wait,
        )
        node = Node(broker, metrics)
        await broker.start(node.sink)
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in nodes:
            await node.broker.close()
