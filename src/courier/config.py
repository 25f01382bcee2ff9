"""Settings: defaults < TOML file < COURIER_* environment variables < command-line flags."""

from __future__ import annotations

import os
import tomllib
from typing import Any

import msgspec

from courier.transport.admission import parse_networks


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./courier-data"
    # Bounds (PROTOCOL.md defaults)
    body_max_chars: int = 4096
    frame_max_bytes: int = 64 * 1024
    request_max_bytes: int = 64 * 1024
    max_connections_per_user: int = 32
    send_rate: float = 50.0  # sends per second per user (token bucket refill)
    send_burst: int = 200  # bucket size
    frame_rate: float = 500.0  # WebSocket frames per second per connection
    frame_burst: int = 2000
    typing_rate: float = 5.0
    typing_burst: int = 10
    presence_grace_s: float = 10.0  # seconds after the last connection closes before offline
    search_rate: float = 2.0  # people searches per second per user
    search_burst: int = 20
    group_max_members: int = 1000  # members of one group, its owner included
    user_max_groups: int = 500  # groups one user may be in
    ws_send_buffer_max: int = 1024 * 1024  # bytes queued for one connection before it is cut
    ws_pending_sends_max: int = 1024  # sends of one connection waiting for the store
    ws_heartbeat: float = 30.0
    auth_timeout: float = 10.0
    longpoll_max_wait: float = 60.0
    # Connections and HTTP deadlines (docs/operations.md, "Limits")
    max_connections: int = 0  # open sockets in all; 0 = the descriptor limit less a reserve
    max_connections_per_address: int = 5000  # per source address; 0 = no cap
    trusted_proxies: str = ""  # comma-separated addresses/CIDRs whose X-Forwarded-For counts
    http_head_timeout: float = 10.0  # seconds for a request's head to arrive
    http_body_timeout: float = 30.0  # seconds for a request's body to arrive
    http_keepalive_timeout: float = 75.0  # seconds an idle keep-alive connection is kept
    # Throttles on registration and login (per second; 0 = off)
    register_rate_per_address: float = 0.2
    register_burst_per_address: int = 10
    login_rate_per_address: float = 1.0
    login_burst_per_address: int = 20
    login_failure_rate_per_user: float = 0.1
    login_failure_burst_per_user: int = 10
    # Metrics: their own listener (default loopback only); "off" = none. With metrics_token
    # set, /metrics is also served on the main port to callers bearing that token.
    metrics_listen: str = "127.0.0.1:9464"
    metrics_token: str = ""
    # Adapters: the embedded default, or the cluster engines
    store: str = "rocks"  # "rocks" | "postgres"
    postgres_servers: str = ""  # comma-separated DSNs, one per physical server
    broker: str = "local"  # "local" | "nats"
    nats_url: str = "nats://127.0.0.1:4222"
    node_id: str = ""  # this node's name in a cluster (default: host:port)
    # Store
    store_batch_max: int = 1000
    store_cache_mb: int = 128
    # Recent-conversations cache
    cache: str = "memory"  # "memory" (in-process LRU) | "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_users: int = 10_000  # users whose views the in-process cache keeps (LRU)
    cache_ttl: float = 300.0  # seconds a view may be served before it is read again
    # Retention (0 = keep forever)
    retention_days: float = 0.0
    retention_interval: float = 3600.0
    # Sessions: a token unused for longer is refused and deleted (0 = never)
    session_idle_days: float = 30.0
    # Password hashing (argon2id; OWASP's minimum is t=2, m=19 MiB)
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19456
    argon2_parallelism: int = 1
    log_level: str = "info"


_FIELDS = {
    f: t for f, t in zip(Settings.__struct_fields__, Settings.__annotations__.values(), strict=True)
}


def _coerce(name: str, raw: str) -> Any:
    kind = _FIELDS[name]
    if kind in ("int", int):
        return int(raw)
    if kind in ("float", float):
        return float(raw)
    return raw


def load_settings(
    *, config_file: str | None = None, env: dict[str, str] | None = None, **flags: Any
) -> Settings:
    """Merge the sources; invalid values raise ValueError with the offending name."""
    values: dict[str, Any] = {}
    env = dict(os.environ) if env is None else env
    config_file = config_file or env.get("COURIER_CONFIG")
    if config_file:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
        section = data.get("courier", data)
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ValueError(f"unknown setting {key!r} in {config_file}")
            values[name] = value
    for name in _FIELDS:
        raw = env.get("COURIER_" + name.upper())
        if raw is not None and raw != "":
            try:
                values[name] = _coerce(name, raw)
            except ValueError as exc:
                raise ValueError(f"COURIER_{name.upper()}: {exc}") from None
    for name, value in flags.items():
        if value is not None:
            values[name] = value
    try:
        settings = msgspec.convert(values, Settings)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid setting: {exc}") from None
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    positive = (
        "body_max_chars",
        "frame_max_bytes",
        "request_max_bytes",
        "max_connections_per_user",
        "send_rate",
        "send_burst",
        "frame_rate",
        "frame_burst",
        "typing_rate",
        "typing_burst",
        "search_rate",
        "presence_grace_s",
        "search_burst",
        "group_max_members",
        "user_max_groups",
        "ws_send_buffer_max",
        "ws_pending_sends_max",
        "auth_timeout",
        "http_head_timeout",
        "http_body_timeout",
        "http_keepalive_timeout",
        "register_burst_per_address",
        "login_burst_per_address",
        "login_failure_burst_per_user",
        "store_batch_max",
        "store_cache_mb",
        "cache_users",
        "cache_ttl",
        "retention_interval",
        "argon2_time_cost",
        "argon2_memory_kib",
        "argon2_parallelism",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise ValueError(f"setting {name} must be positive")
    if not 0 <= s.port <= 65535:
        raise ValueError("setting port must be in 0..65535 (0 = any free port)")
    if s.cache not in ("memory", "redis"):
        raise ValueError("setting cache must be memory or redis")
    if s.store not in ("rocks", "postgres"):
        raise ValueError("setting store must be rocks or postgres")
    if s.broker not in ("local", "nats"):
        raise ValueError("setting broker must be local or nats")
    if s.store == "postgres" and not s.postgres_servers.strip():
        raise ValueError("setting postgres_servers is required when store = postgres")
    for name in (
        "max_connections",
        "max_connections_per_address",
        "register_rate_per_address",
        "login_rate_per_address",
        "login_failure_rate_per_user",
    ):
        if getattr(s, name) < 0:
            raise ValueError(f"setting {name} must be 0 (off) or positive")
    try:
        parse_networks(s.trusted_proxies)
    except ValueError as exc:
        raise ValueError(f"setting trusted_proxies: {exc}") from None
    if s.metrics_listen != "off":
        _host, sep, port = s.metrics_listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError('setting metrics_listen must be HOST:PORT (or "off" for none)')
    if s.metrics_token and len(s.metrics_token) < 16:
        raise ValueError("setting metrics_token must be at least 16 characters")
    if s.retention_days < 0:
        raise ValueError("setting retention_days must be 0 (off) or positive")
    if s.session_idle_days < 0:
        raise ValueError("setting session_idle_days must be 0 (never expire) or positive")
    if not 0 < s.longpoll_max_wait <= 3600:
        raise ValueError("setting longpoll_max_wait must be in (0, 3600]")
