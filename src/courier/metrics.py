"""Prometheus metrics. One registry per server, so several servers can live in one process
(tests) without clashing."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HotCounters(Collector):
    """Counters bumped once per message live in plain ints (no lock on the hot path); the
    registry reads them at scrape time."""

    def __init__(self) -> None:
        self.messages_sent = 0
        self.send_retries = 0
        self.events_pushed = 0
        self.cache = {"hit": 0, "miss": 0, "error": 0}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "courier_messages_sent",
            "Messages durably stored (retries not counted).",
            value=self.messages_sent,
        )
        yield CounterMetricFamily(
            "courier_send_retries",
            "Sends answered from the original (same client_id).",
            value=self.send_retries,
        )
        yield CounterMetricFamily(
            "courier_events_pushed",
            "Frames written to live WebSocket connections.",
            value=self.events_pushed,
        )
        lookups = CounterMetricFamily(
            "courier_cache_requests",
            "Recent-conversation cache lookups, by result (hit, miss, error).",
            labels=["result"],
        )
        for result, count in self.cache.items():
            lookups.add_metric([result], count)
        yield lookups
        total = sum(self.cache.values())
        yield GaugeMetricFamily(
            "courier_cache_hit_ratio",
            "Recent-conversation cache hits over lookups since start.",
            value=self.cache["hit"] / total if total else 0.0,
        )


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.hot = HotCounters()
        r.register(self.hot)
        self.connections = Gauge(
            "courier_connections", "Live WebSocket connections on this node.", registry=r
        )
        self.ws_upgrades = Counter(
            "courier_ws_upgrades",
            "WebSocket upgrades by front: lean (a new TCP connection) or aiohttp (an upgrade "
            "on a keep-alive connection that carried HTTP requests first).",
            ["front"],
            registry=r,
        )
        self.longpolls = Gauge(
            "courier_longpolls_held", "Long-poll requests being held on this node.", registry=r
        )
        self.send_to_push = Histogram(
            "courier_send_to_push_seconds",
            "From a send being accepted to its event being pushed to the recipient's devices.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_batch_size = Histogram(
            "courier_store_batch_size",
            "Operations per group commit.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.store_commit_seconds = Histogram(
            "courier_store_commit_seconds",
            "Time to apply and durably commit one batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.slow_consumers = Counter(
            "courier_slow_consumers", "Connections closed because they fell behind.", registry=r
        )
        self.errors = Counter(
            "courier_errors", "Errors answered to clients, by code.", ["code"], registry=r
        )
        self.backend_up = Gauge(
            "courier_backend_up", "1 when a backend is reachable.", ["backend"], registry=r
        )
        self.retention_dropped = Counter(
            "courier_retention_dropped_events",
            "Events dropped by the retention sweep.",
            registry=r,
        )

        self.presence_frames = Counter(
            "courier_presence_frames",
            "Presence frames published to contacts (after coalescing).",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
