"""Fixtures of the client tests: a real Courier server in a subprocess, never a mock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from courier.client import Client
from tests.client.support import PASSWORD, Server, Users, new_username
from tests.procs import free_port


def _server(tmp: Path) -> Iterator[Server]:
    server = Server(tmp / "data", free_port(), tmp / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by the tests that do not disturb it."""
    yield from _server(tmp_path_factory.mktemp("courier-server"))


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that kill and restart it."""
    yield from _server(tmp_path)


@pytest.fixture
async def users() -> AsyncIterator[Users]:
    """Makes fresh logged-in accounts: ``await users(url, **client_options)``; closes them."""
    made: list[Client] = []

    async def make(url: str, **options: object) -> Client:
        client = await Client.register(url, new_username(), PASSWORD, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()
