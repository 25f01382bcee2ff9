"""W3: idle connections. Authenticated WebSockets held open by several driver processes, each
from its own loopback source address (so ephemeral ports never run out); figures are connect
time and the server's RSS increase per connection."""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from bench.accounts import fresh_accounts
from bench.client import close_all, connect, decode, encode
from bench.common import CpuMeter, Latency, Result, Settings, Target, rnd
from bench.drivers import WorkerLink, run_loop, run_workers

CONNECT_CONCURRENCY = 100
PER_USER_DEFAULT_CAP = 30
PONG_WAIT_S = 15.0
LATE_PONG_WAIT_S = 30.0


@dataclass(frozen=True)
class IdleJob:
    url: str
    source_ip: str | None
    tokens: list[str]
    budget_s: float
    concurrency: int = CONNECT_CONCURRENCY


class Held:
    """One idle connection with a reader that answers pings and notices closes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pong = asyncio.Event()
        self.task = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            if decode(msg.data).get("type") == "pong":
                self.pong.set()

    async def check(self, wait_s: float) -> str:
        """`alive` (pong in time), `closed`, `timeout` (open, no pong yet) or `error`."""
        if self.ws.closed:
            return "closed"
        try:
            await self.ws.send_str(encode({"type": "ping"}))
        except (aiohttp.ClientError, ConnectionError):
            return "error"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pong.wait(), wait_s)
        if self.pong.is_set():
            return "alive"
        return "closed" if self.ws.closed else "timeout"

    async def answers_late(self, wait_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pong.wait(), wait_s)
        return self.pong.is_set()


async def check_all(held: list[Held]) -> Result:
    """Ping every connection at once; one that is open but has not answered in PONG_WAIT_S
    gets LATE_PONG_WAIT_S more, to tell a slow answer from a lost connection."""
    states = await asyncio.gather(*(h.check(PONG_WAIT_S) for h in held))
    slow = [h for h, state in zip(held, states, strict=True) if state == "timeout"]
    late = await asyncio.gather(*(h.answers_late(LATE_PONG_WAIT_S) for h in slow))
    return {
        "alive": states.count("alive"),
        "dead": {k: states.count(k) for k in ("closed", "timeout", "error")},
        "late_pongs": sum(late),
    }


async def hold(job: IdleJob, link: WorkerLink) -> Result:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    local = (job.source_ip, 0) if job.source_ip else None
    connector = aiohttp.TCPConnector(limit=0, local_addr=local)
    timeout = aiohttp.ClientTimeout(total=None, connect=60)
    latency = Latency()
    held: list[Held] = []
    failures: list[str] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start_ns = await link.ready()
        cpu_start = time.process_time()
        sem = asyncio.Semaphore(job.concurrency)

        async def open_one(token: str) -> None:
            async with sem:
                t0 = time.perf_counter_ns()
                try:
                    ws, _ = await connect(session, job.url, token)
                except Exception as exc:
                    failures.append(repr(exc)[:200])
                    return
                latency.record_ns(time.perf_counter_ns() - t0)
                held.append(Held(ws))
                if len(held) % 100 == 0:
                    link.count(len(held))

        try:
            async with asyncio.timeout(job.budget_s):
                await asyncio.gather(*(open_one(t) for t in job.tokens))
        except TimeoutError:
            failures.append("connect budget exceeded")
        connected_ns = time.perf_counter_ns()
        link.count(len(held))
        await link.held(
            {
                "connected": len(held),
                "failed": len(failures),
                "failure_sample": failures[:3],
                "start_ns": start_ns,
                "connected_ns": connected_ns,
                "latency": latency.encode(),
            }
        )
        checks = await check_all(held)
        cpu = time.process_time() - cpu_start
        await close_all([h.ws for h in held])
        for h in held:
            h.task.cancel()
        await asyncio.gather(*(h.task for h in held), return_exceptions=True)
    return {**checks, "process_cpu_s": cpu}


def idle_worker(job: IdleJob, link: WorkerLink) -> Result:
    return run_loop(hold(job, link))


def source_ip(index: int) -> str:
    """A loopback source address of its own for driver process `index`."""
    return f"127.0.{index // 250}.{2 + index % 250}"


def connect_figures(held_info: list[Result], done: list[Result]) -> Result:
    """Connected, failed, alive and connect-time figures over all driver processes."""
    latency = Latency()
    for h in held_info:
        latency.add_encoded(h["latency"])
    connected = sum(int(h["connected"]) for h in held_info)
    start = min(int(h["start_ns"]) for h in held_info)
    end = max(int(h["connected_ns"]) for h in held_info)
    total_s = (end - start) / 1e9
    return {
        "connected": connected,
        "failed": sum(int(h["failed"]) for h in held_info),
        "alive_after_hold": sum(int(d["alive"]) for d in done),
        "dead_after_hold": {
            k: sum(int(d["dead"][k]) for d in done) for k in ("closed", "timeout", "error")
        },
        "late_pongs": sum(int(d["late_pongs"]) for d in done),
        "connect_s": rnd(total_s),
        "connect_ms_per_conn": rnd(total_s * 1000 / connected, 4) if connected else None,
        "connect_latency_ms": latency.summary_ms(),
        "failure_sample": [s for h in held_info for s in h["failure_sample"]][:3],
    }


async def run(settings: Settings, target: Target) -> Result:
    n = settings.w3_connections or (2000 if settings.quick else 19000)
    per_proc = settings.w3_per_process
    users = 200 if settings.owns_server else math.ceil(n / PER_USER_DEFAULT_CAP)
    users = min(users, n)
    names, tokens = await fresh_accounts(target.url, "w3", users)
    conn_tokens = [tokens[names[i % users]] for i in range(n)]
    procs = min(n, max(2, math.ceil(n / per_proc)))
    ipv4 = (urlsplit(target.url).hostname or "").startswith("127.")
    jobs = [
        IdleJob(target.url, source_ip(p) if ipv4 else None, conn_tokens[p::procs], budget_s=300)
        for p in range(procs)
    ]
    hold_s = 3.0 if settings.quick else 10.0
    meter = CpuMeter(target)
    readings: dict[str, int | None] = {"before": None, "after": None}
    held_info: list[Result] = []

    def before() -> None:
        readings["before"] = target.rss_kib()
        meter.start()

    async def measure(held: list[Result]) -> None:
        await asyncio.sleep(hold_s)
        readings["after"] = target.rss_kib()
        held_info.extend(held)

    _, done = await run_workers(
        idle_worker,
        jobs,
        label="W3 connections",
        total=n,
        budget_s=900,
        on_go=before,
        on_held=measure,
    )
    meter.stop()
    conn = connect_figures(held_info, done)
    connected = int(conn["connected"])
    rss_before, rss_after = readings["before"], readings["after"]
    per_conn = (
        (rss_after - rss_before) / connected
        if rss_before is not None and rss_after is not None and connected
        else None
    )
    worker_cpu = sum(float(d["process_cpu_s"]) for d in done)
    figures = meter.figures(0, worker_cpu)
    return {
        "workload": "W3",
        "connections": n,
        "connected": connected,
        "failed": conn["failed"],
        "alive_after_hold": conn["alive_after_hold"],
        "dead_after_hold": conn["dead_after_hold"],
        "late_pongs": conn["late_pongs"],
        "users": users,
        "driver_procs": procs,
        "connect_s": conn["connect_s"],
        "connect_ms_per_conn": conn["connect_ms_per_conn"],
        "connect_latency_ms": conn["connect_latency_ms"],
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_rss_kib_per_conn": rnd(per_conn, 2),
        "server_cpu_s": figures["server_cpu_s"],
        "server_cpu_s_per_100k": None,
        "driver_cpu_s": figures["driver_cpu_s"],
        "failure_sample": conn["failure_sample"],
    }
