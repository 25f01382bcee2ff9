"""R1's clients: thousands of WebSockets per driver process on the lean client, each one
checking what it receives as it arrives and, after a drop, coming back by itself with the
SDK's backoff and `after=<last seq it processed>`, authenticated in the first frame."""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.client import ProtocolError, decode
from bench.common import Latency, Result
from bench.drivers import WorkerLink
from bench.lean_ws import LeanSocket, open_socket
from bench.storm_shared import BUCKET_NS, Shared
from courier.client.backoff import STABLE_AFTER_S, backoff, ceiling

CONNECT_CONCURRENCY = 100
HELLO_TIMEOUT_S = 30.0
SCHEDULES = ("full", "equal", "none")


def retry_delay(schedule: str, attempt: int) -> float:
    """The wait before retry `attempt`: the SDK's full jitter (the default), or for comparison
    the older "equal jitter" (half the ceiling plus a random half) or no jitter at all."""
    if schedule == "equal":
        top = ceiling(attempt)
        return top / 2 + random.uniform(0, top / 2)
    if schedule == "none":
        return ceiling(attempt)
    return backoff(attempt)


@dataclass(frozen=True)
class DeviceJob:
    index: int
    url: str
    source_ip: str | None
    users: list[int]  # each client's user (an index into the user list)
    tokens: list[str]
    shared: Shared
    connect_budget_s: float
    schedule: str


class Device:
    """One client: its resume point and what it received, checked as it arrives."""

    __slots__ = (
        "back_ns",
        "dropped_ns",
        "drops",
        "duplicated",
        "highest",
        "last_seq",
        "reordered",
        "seen",
        "seq_gaps",
        "token",
        "unique",
        "user",
        "ws",
    )

    def __init__(self, user: int, token: str) -> None:
        self.user = user
        self.token = token
        self.last_seq = 0
        self.seen = bytearray(64)  # seen[n] = 1 once message n arrived
        self.highest = 0
        self.unique = 0
        self.duplicated = 0
        self.reordered = 0
        self.seq_gaps = 0
        self.dropped_ns = 0
        self.back_ns = 0
        self.drops = 0
        self.ws: LeanSocket | None = None

    def take(self, frame: dict[str, Any], delivery: Latency, now: int) -> bool:
        """Check one timeline event; True when it is a message not seen before."""
        seq = int(frame["seq"])
        if seq <= self.last_seq:
            self.duplicated += 1  # the server replayed what this client had processed
            return False
        if seq != self.last_seq + 1:
            self.seq_gaps += 1
        self.last_seq = seq
        body = frame.get("body", "")
        n = int(body[:8])
        delivery.record_ns(now - int(body[9:29]))
        if n >= len(self.seen):
            self.seen.extend(bytes(max(n + 1 - len(self.seen), len(self.seen))))
        if self.seen[n]:
            self.duplicated += 1  # stored twice under different seqs
            return False
        self.seen[n] = 1
        self.unique += 1
        if n < self.highest:
            self.reordered += 1
        self.highest = max(self.highest, n)
        return True

    def tally(self, acked: int) -> tuple[int, int]:
        """(lost, delivered but never acknowledged) against the sender's acknowledged count."""
        got = sum(self.seen[1 : acked + 1])
        return acked - got, self.unique - got


@dataclass
class Crowd:
    """The clients of one driver process and their counters."""

    job: DeviceJob
    devices: list[Device]
    host: str = ""
    port: int = 0
    delivery: Latency = field(default_factory=Latency)
    attempts: Counter[int] = field(default_factory=Counter)  # per 100 ms bucket
    returns: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    failure_sample: list[str] = field(default_factory=list)  # the first of each cause
    lag: dict[int, int] = field(default_factory=dict)  # per 100 ms: the event loop's worst lag
    up: int = 0
    back: int = 0
    received: int = 0
    reconnects: int = 0

    def __post_init__(self) -> None:
        parts = urlsplit(self.job.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    async def open(self, dev: Device) -> LeanSocket:
        """Connect with `after` = the last seq processed; the token goes in the first frame."""

        def on_text(payload: bytes) -> None:
            frame = decode(payload)
            if frame.get("type") != "message" or "seq" not in frame:
                return
            if dev.take(frame, self.delivery, time.perf_counter_ns()):
                self.received += 1

        return await open_socket(
            self.host,
            self.port,
            f"/v1/ws?after={dev.last_seq}",
            dev.token,
            on_text,
            local_ip=self.job.source_ip,
            within_s=HELLO_TIMEOUT_S,
        )

    async def live(self, dev: Device) -> None:
        """Hold the client's connection for ever; after a drop, come back with the SDK's
        backoff and `after=last_seq`, as the SDK does."""
        attempt = 0
        sock = dev.ws
        connected_at = time.monotonic()
        while True:
            if sock is None:
                now = time.perf_counter_ns()
                self.attempts[now // BUCKET_NS] += 1
                try:
                    sock = await self.open(dev)
                except (OSError, TimeoutError, ProtocolError) as exc:
                    cause = type(exc).__name__
                    if not self.failures[cause]:
                        self.failure_sample.append(f"{cause}: {exc}"[:200])
                    self.failures[cause] += 1
                    await asyncio.sleep(retry_delay(self.job.schedule, attempt))
                    attempt += 1
                    continue
                dev.ws = sock
                connected_at = time.monotonic()
                self.up += 1
                self.reconnects += 1
                if dev.dropped_ns and not dev.back_ns:
                    dev.back_ns = time.perf_counter_ns()
                    self.returns[dev.back_ns // BUCKET_NS] += 1
                    self.back += 1
            try:
                await sock.closed
            finally:
                self.up -= 1
                dev.ws = None
            dev.drops += 1
            dev.dropped_ns = dev.dropped_ns or time.perf_counter_ns()
            sock = None
            if time.monotonic() - connected_at > STABLE_AFTER_S:
                attempt = 0
            await asyncio.sleep(retry_delay(self.job.schedule, attempt))
            attempt += 1

    async def watch_lag(self) -> None:
        """How late the driver's own event loop runs, per 100 ms: a busy driver delays the
        retries it schedules, which would bunch them up whatever the backoff says."""
        while True:
            t0 = time.perf_counter_ns()
            await asyncio.sleep(0.01)
            now = time.perf_counter_ns()
            bucket = now // BUCKET_NS
            self.lag[bucket] = max(self.lag.get(bucket, 0), now - t0 - 10_000_000)

    def publish(self) -> None:
        i, shared = self.job.index, self.job.shared
        shared.up[i] = self.up
        shared.back[i] = self.back
        shared.received[i] = self.received


async def hold_devices(job: DeviceJob, link: WorkerLink) -> Result:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    crowd = Crowd(job, [Device(u, t) for u, t in zip(job.users, job.tokens, strict=True)])
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failed: list[str] = []

    async def first(dev: Device) -> None:
        async with sem:
            try:
                dev.ws = await crowd.open(dev)
            except Exception as exc:
                failed.append(repr(exc)[:200])
                return
            crowd.up += 1
            if crowd.up % 100 == 0:
                link.count(crowd.up)

    try:
        async with asyncio.timeout(job.connect_budget_s):
            await asyncio.gather(*(first(d) for d in crowd.devices))
    except TimeoutError:
        failed.append("connect budget exceeded")
    link.count(crowd.up)
    if failed:
        raise RuntimeError(f"{len(failed)} clients could not connect: {failed[:3]}")
    crowd.publish()
    await link.ready()
    held = asyncio.create_task(link.held({}, wait_s=3600))
    tasks = [asyncio.create_task(crowd.live(d)) for d in crowd.devices]
    tasks.append(asyncio.create_task(crowd.watch_lag()))
    cpu_start = time.process_time()
    while not held.done():
        crowd.publish()
        link.count(crowd.up)
        await asyncio.wait([held], timeout=0.2)
    cpu = time.process_time() - cpu_start
    sockets = [d.ws for d in crowd.devices if d.ws is not None]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for sock in sockets:
        sock.abort()
    acked = job.shared.acked[:]
    lost = unacked = 0
    for dev in crowd.devices:
        dev_lost, dev_unacked = dev.tally(acked[dev.user])
        lost += dev_lost
        unacked += dev_unacked
    devs = crowd.devices
    return {
        "lost": lost,
        "unacked_delivered": unacked,
        "duplicated": sum(d.duplicated for d in devs),
        "reordered": sum(d.reordered for d in devs),
        "seq_gaps": sum(d.seq_gaps for d in devs),
        "received": crowd.received,
        "dropped_ns": [d.dropped_ns for d in devs],
        "back_ns": [d.back_ns for d in devs],
        "drops": sum(d.drops for d in devs),
        "never_back": sum(1 for d in devs if d.dropped_ns and not d.back_ns),
        "reconnects": crowd.reconnects,
        "attempts": dict(crowd.attempts),
        "returns": dict(crowd.returns),
        "failures": dict(crowd.failures),
        "failure_sample": crowd.failure_sample,
        "lag": crowd.lag,
        "delivery": crowd.delivery.encode(),
        "process_cpu_s": cpu,
    }
