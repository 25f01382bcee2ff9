"""Settings: defaults < TOML file < COURIER_* environment variables < command-line flags."""

from __future__ import annotations

import os
import tomllib
from typing import Any

import msgspec


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
    ws_send_buffer_max: int = 1024 * 1024  # bytes queued for one connection before it is cut
    ws_heartbeat: float = 30.0
    auth_timeout: float = 10.0
    longpoll_max_wait: float = 60.0
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
        "ws_send_buffer_max",
        "auth_timeout",
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
    if s.retention_days < 0:
        raise ValueError("setting retention_days must be 0 (off) or positive")
    if s.session_idle_days < 0:
        raise ValueError("setting session_idle_days must be 0 (never expire) or positive")
    if not 0 < s.longpoll_max_wait <= 3600:
        raise ValueError("setting longpoll_max_wait must be in (0, 3600]")
