"""Shared fixtures: a real server on a real loopback socket, and a lean protocol client."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from courier.config import Settings, load_settings
from courier.server import Server
from tests.engines import BACKEND, Engines
from tests.helpers import Api

# Cheap password hashing keeps the suite fast; production defaults are checked in test_config.
FAST = {"argon2_time_cost": 1, "argon2_memory_kib": 8192}
# Every test client comes from loopback: no per-address caps or throttles unless a test asks.
LOOPBACK_CLIENTS = {
    "max_connections_per_address": 0,
    "register_rate_per_address": 0,
    "login_rate_per_address": 0,
    "login_failure_rate_per_user": 0,
    "metrics_listen": "127.0.0.1:0",
}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **FAST,
        **LOOPBACK_CLIENTS,
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": str(data_dir),
    }
    values.update(overrides)
    return load_settings(env={}, **values)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on the loop `courier serve` runs on (its transports differ from asyncio's)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to start the server with other settings."""
    return {}


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines | None]:
    """The cluster engines, when the suite runs against the cluster adapters."""
    if BACKEND != "cluster":
        yield None
        return
    started = Engines()
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture
async def server(
    tmp_path: Path, settings_overrides: dict[str, Any], engines: Engines | None
) -> AsyncIterator[Server]:
    backend = await engines.fresh() if engines is not None else {}
    srv = Server(make_settings(tmp_path / "data", **backend, **settings_overrides))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
def ws_front() -> str:
    """Override (or parametrize) in a test module to reach the other WebSocket front."""
    return "lean"


@pytest.fixture
async def api(server: Server, ws_front: str) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        api = Api(server.url, session, ws_front, metrics=server.metrics_url)
        try:
            yield api
        finally:
            await api.close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback only: never route test traffic through a proxy from the environment."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
