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
from functools import partial
from pathlib import Path
from typing import Any

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
from courier.service.blocks import Blocks
from courier.service.delivery import Delivery
from courier.service.groups import Groups
from courier.service.presence import Presence
from courier.service.profiles import Profiles
from courier.service.registry import Registry
from courier.service.retention import run_retention
from courier.service.throttle import AuthThrottle, ThrottleSettings
from courier.transport.admission import FD_RESERVE, Admission, parse_networks
from courier.transport.app import build_app, build_metrics_app
from courier.transport.http_api import HttpApi
from courier.transport.http_groups import GroupRoutes
from courier.transport.http_guard import GuardedHandler
from courier.transport.http_profiles import ProfileRoutes
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
        if settings.broker != "local":  # one process holds every member: nothing to watch
            self.registry.watch_groups(self.store)
        hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        throttle = AuthThrottle(ThrottleSettings.of(settings))
        self.accounts = Accounts(
            self.store,
            self.broker,
            hasher,
            throttle=throttle,
            session_idle_days=settings.session_idle_days,
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
        self.groups = Groups(
            self.store,
            self.delivery,
            max_members=settings.group_max_members,
            max_groups=settings.user_max_groups,
        )
        self.profiles = Profiles(
            self.store, search_rate=settings.search_rate, search_burst=settings.search_burst
        )
        self.blocks = Blocks(self.store)
        self.presence = Presence(
            self.store,
            self.broker,
            self.metrics,
            local_count=self.registry.count,
            grace_s=settings.presence_grace_s,
        )
        self.registry.presence = self.presence
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._metrics_listener: asyncio.Server | None = None
        self.metrics_port: int | None = None
        self._listener: asyncio.Server | None = None
        self._lean: LeanFront | None = None
        self._retention: asyncio.Task[None] | None = None
        self._keep_alive: asyncio.Task[None] | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        """The metrics listener's base URL, once started (None without one)."""
        if self.metrics_port is None:
            return None
        host = self.settings.metrics_listen.rpartition(":")[0]
        return f"http://{host}:{self.metrics_port}"

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
            body_timeout=s.http_body_timeout,
            trusted_proxies=parse_networks(s.trusted_proxies),
            metrics_token=s.metrics_token,
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
                pending_sends_max=s.ws_pending_sends_max,
            ),
        )
        extra = [
            *GroupRoutes(api, self.groups).routes(),
            *ProfileRoutes(api, self.profiles, self.blocks, self.presence).routes(),
        ]
        app = build_app(api, ws, s.request_max_bytes, extra)
        # Generous line and header bounds so that long-but-well-formed requests reach the
        # application and get the contract's JSON errors; broken HTTP framing gets them from
        # GuardedHandler.handle_error.
        handler_args: dict[str, Any] = {
            "access_log": None,
            "max_line_size": 32 * 1024,
            "max_field_size": 32 * 1024,
            "keepalive_timeout": s.http_keepalive_timeout,
            "lingering_time": 1.0,  # seconds spent reading an unread body before closing
        }
        self._runner = web.AppRunner(app, handler_cancellation=True, **handler_args)
        await self._runner.setup()
        http = self._runner.server
        assert http is not None
        total = s.max_connections or max(raise_fd_limit() - FD_RESERVE, 64)
        admission = self.admission = Admission(
            total, s.max_connections_per_address, parse_networks(s.trusted_proxies)
        )
        lean = self._lean = LeanFront(ws, admission)
        lean.start()
        loop = asyncio.get_running_loop()

        def http_front(address: str) -> GuardedHandler:
            return GuardedHandler(
                http,
                loop=loop,
                head_timeout=s.http_head_timeout,
                release=partial(admission.release, address),
                **handler_args,
            )

        def sniffer() -> PortSniffer:
            return PortSniffer(http_front, lean, s.auth_timeout, admission)

        if sock is not None:
            self._listener = await loop.create_server(sniffer, sock=sock, backlog=4096)
        else:
            self._listener = await loop.create_server(
                sniffer, s.host, s.port, backlog=4096, reuse_address=True
            )
        self.port = self._listener.sockets[0].getsockname()[1]
        if s.metrics_listen != "off":
            await self._start_metrics(api, s.metrics_listen)
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

    async def _start_metrics(self, api: HttpApi, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        runner = self._metrics_runner = web.AppRunner(build_metrics_app(api), access_log=None)
        await runner.setup()
        assert runner.server is not None
        try:
            self._metrics_listener = await asyncio.get_running_loop().create_server(
                runner.server, host.strip("[]"), int(port), reuse_address=True
            )
        except OSError as exc:
            raise OSError(f"cannot listen for metrics on {listen}: {exc.strerror}") from exc
        self.metrics_port = self._metrics_listener.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)

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
        if self._metrics_listener is not None:
            self._metrics_listener.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        self.accounts.close()
        self.presence.close()
        if self.registry.groups is not None:
            await self.registry.groups.close()
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
