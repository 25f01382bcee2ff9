"""The composition root: builds the adapters chosen by configuration, the service and the
transport, and runs them on uvloop until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
from pathlib import Path

import uvloop
from aiohttp import web
from argon2 import PasswordHasher

from courier.adapters.local_broker import LocalBroker
from courier.adapters.memory_cache import MemoryCache
from courier.adapters.rocks_store import RocksStore
from courier.config import Settings
from courier.metrics import Metrics
from courier.ports import Broker, Cache, Store
from courier.service.accounts import Accounts
from courier.service.delivery import Delivery
from courier.service.registry import Registry
from courier.service.retention import run_retention
from courier.transport.app import build_app
from courier.transport.http_api import HttpApi
from courier.transport.listener import PortSniffer
from courier.transport.ws import WsEndpoint, WsSettings
from courier.transport.ws_lean import LeanFront

log = logging.getLogger("courier")


def raise_fd_limit() -> int:
    """Use every file descriptor the hard limit allows: each socket needs one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def build_store(settings: Settings, metrics: Metrics) -> Store:
    """The Store adapter named by the settings (cluster adapters are imported only when used)."""
    if settings.store == "postgres":
        from courier.adapters.pg_store import PgStore

        dsns = [d.strip() for d in settings.postgres_servers.split(",") if d.strip()]
        return PgStore(dsns, metrics=metrics, batch_max=settings.store_batch_max)
    return RocksStore(
        str(Path(settings.data_dir) / "store"),
        metrics=metrics,
        batch_max=settings.store_batch_max,
        cache_mb=settings.store_cache_mb,
    )


def build_broker(settings: Settings, metrics: Metrics) -> Broker:
    if settings.broker == "nats":
        from courier.adapters.nats_broker import NatsBroker

        node = settings.node_id or f"{settings.host}:{settings.port}"
        return NatsBroker(settings.nats_url, node_id=node, metrics=metrics)
    return LocalBroker()


def build_cache(settings: Settings) -> Cache:
    """The Cache adapter named by the settings (Redis is imported only when used)."""
    if settings.cache == "redis":
        from courier.adapters.redis_cache import RedisCache

        return RedisCache(settings.redis_url, ttl=settings.cache_ttl)
    return MemoryCache(max_users=settings.cache_users, ttl=settings.cache_ttl)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = build_store(settings, self.metrics)
        self.broker = build_broker(settings, self.metrics)
        self.cache = build_cache(settings)
        self.registry = Registry(self.broker, self.metrics, settings.max_connections_per_user)
        hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        self.accounts = Accounts(
            self.store, self.broker, hasher, session_idle_days=settings.session_idle_days
        )
        self.delivery = Delivery(
            self.store,
            self.broker,
            self.metrics,
            body_max_chars=settings.body_max_chars,
            send_rate=settings.send_rate,
            send_burst=settings.send_burst,
            typing_rate=settings.typing_rate,
            typing_burst=settings.typing_burst,
            cache=self.cache,
        )
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._lean: LeanFront | None = None
        self._retention: asyncio.Task[None] | None = None
        self._keep_alive: asyncio.Task[None] | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def start(self, sock: socket.socket | None = None) -> None:
        s = self.settings
        await self.store.open()
        await self.cache.start()
        await self.broker.start(self.registry.dispatch)
        # A cluster broker connects in the background; give it a moment so that a node that
        # can reach NATS starts healthy (it serves either way: events then wait in the store).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.broker.wait_ready()
        api = HttpApi(
            self.accounts,
            self.delivery,
            self.registry,
            {"store": self.store, "broker": self.broker, "cache": self.cache},
            self.metrics,
            s.longpoll_max_wait,
        )
        ws = WsEndpoint(
            self.accounts,
            self.delivery,
            self.registry,
            self.metrics,
            WsSettings(
                frame_max_bytes=s.frame_max_bytes,
                send_buffer_max=s.ws_send_buffer_max,
                heartbeat=s.ws_heartbeat,
                auth_timeout=s.auth_timeout,
                frame_rate=s.frame_rate,
                frame_burst=s.frame_burst,
            ),
        )
        app = build_app(api, ws, s.request_max_bytes)
        # Generous line and header bounds so that long-but-well-formed requests reach the
        # application and get the contract's JSON errors; only broken HTTP framing is
        # answered by aiohttp's own (plain-text) 400.
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            max_line_size=32 * 1024,
            max_field_size=32 * 1024,
        )
        await self._runner.setup()
        http = self._runner.server
        assert http is not None
        lean = self._lean = LeanFront(ws)
        lean.start()
        loop = asyncio.get_running_loop()

        def sniffer() -> PortSniffer:
            return PortSniffer(http, lean, s.auth_timeout)

        if sock is not None:
            self._listener = await loop.create_server(sniffer, sock=sock, backlog=4096)
        else:
            self._listener = await loop.create_server(
                sniffer, s.host, s.port, backlog=4096, reuse_address=True
            )
        self.port = self._listener.sockets[0].getsockname()[1]
        # Open connections are use of their sessions: recorded about once an hour.
        self._keep_alive = asyncio.create_task(
            self.accounts.run_keep_alive(
                lambda: [sub.token_hash for sub in self.registry.subscribers()]
            )
        )
        if s.retention_days > 0:
            self._retention = asyncio.create_task(
                run_retention(self.store, s.retention_days, s.retention_interval, self.metrics)
            )

    async def stop(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keep_alive
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()  # closes every WebSocket (1001), then HTTP
            self._runner = None
        if self._lean is not None:
            await self._lean.stop()
        await self.broker.close()
        await self.cache.close()
        await self.store.close()


async def serve(settings: Settings) -> None:
    server = Server(settings)
    await server.start()
    log.info("courier listening on %s (data in %s)", server.url, settings.data_dir)
    print(f"courier listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("courier shutting down")
        await server.stop()


def run(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    limit = raise_fd_limit()
    log.info("file descriptor limit: %d (pid %d)", limit, os.getpid())
    uvloop.run(serve(settings))
