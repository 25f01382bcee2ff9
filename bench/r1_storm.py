"""R1: a reconnect storm. 10,000 WebSocket clients (quick: 1,000) on one `courier serve`,
held by several driver processes, each on its own loopback source address; a sender keeps
sending to all of their users over HTTP. The server is SIGKILLed and started again on the
same port and data dir; every client comes back by itself, after a fully jittered exponential
delay (the SDK's schedule, `courier.client.backoff`), authenticating in the first frame and
asking for what came after the last seq it processed.

Figures: how long from the restart until every client is back (and each client's p50/p99/max),
connection attempts and the busiest 100 ms of them, messages sent and acknowledged, and
whether every acknowledged message reached every device of its recipient exactly once in
order (lost, duplicated, reordered must all be 0); the server's peak RSS and open descriptors,
sampled from /proc throughout, before the kill and after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.accounts import fresh_accounts
from bench.common import Latency, Result, Settings, console, proc_cpu_seconds, rnd
from bench.drivers import WorkerLink, run_loop, run_workers
from bench.metrics import read as read_metrics
from bench.server import ServerProcess
from bench.storm_clients import SCHEDULES, DeviceJob, hold_devices
from bench.storm_sender import SenderJob, run_sender
from bench.storm_shared import BUCKET_NS, Shared, wait_until
from bench.w3_idle import source_ip

__all__ = ["SCHEDULES", "run"]

DEVICES_PER_USER = 10
PER_PROCESS = 2500
SAMPLE_EVERY_S = 0.25
# Accounts are set-up, not what R1 measures (reconnects authenticate by token): cheap hashing.
CHEAP_HASHING = {"COURIER_ARGON2_TIME_COST": "1", "COURIER_ARGON2_MEMORY_KIB": "8192"}


@dataclass(frozen=True)
class Plan:
    """Sizes and phase lengths of one run."""

    clients: int
    schedule: str  # one of SCHEDULES
    rate: float  # messages per second from the sender, all lanes together
    warm_s: float  # sending before the kill
    after_s: float  # sending after every client is back
    connect_budget_s: float
    back_budget_s: float
    drain_budget_s: float = 60.0
    finish_budget_s: float = 60.0  # for the sender's last retries


def plan_for(settings: Settings) -> Plan:
    if settings.quick:
        n = settings.r1_clients or 1000
        return Plan(
            n,
            settings.r1_backoff,
            rate=100,
            warm_s=3,
            after_s=3,
            connect_budget_s=60,
            back_budget_s=60,
        )
    n = settings.r1_clients or 10_000
    return Plan(
        n,
        settings.r1_backoff,
        rate=200,
        warm_s=5,
        after_s=5,
        connect_budget_s=240,
        back_budget_s=120,
    )


def storm_worker(job: DeviceJob | SenderJob, link: WorkerLink) -> Result:
    if isinstance(job, SenderJob):
        return run_loop(run_sender(job, link))
    return run_loop(hold_devices(job, link))


class Sampler:
    """The server's VmRSS and open descriptors every SAMPLE_EVERY_S, peaks per phase."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.phase = "before_kill"
        self.rss: dict[str, int] = {}
        self.fds: dict[str, int] = {}
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            return  # between the kill and the restart there is nothing to read
        self.samples += 1
        self.rss[self.phase] = max(self.rss.get(self.phase, 0), rss)
        self.fds[self.phase] = max(self.fds.get(self.phase, 0), fds)

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(SAMPLE_EVERY_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


KERNEL_COUNTERS = ("ListenOverflows", "ListenDrops", "SyncookiesSent")


def kernel_counters() -> dict[str, int]:
    """TCP counters from /proc/net/netstat: connections dropped because a listening socket's
    accept queue was full, and SYN cookies sent (system-wide: other programs count too)."""
    try:
        with open("/proc/net/netstat") as f:
            rows = [line.split() for line in f if line.startswith("TcpExt:")]
        values = dict(zip(rows[0], rows[1], strict=True))
        return {name: int(values[name]) for name in KERNEL_COUNTERS}
    except (OSError, KeyError, IndexError, ValueError):
        return {}


def server_view(metrics: dict[str, float] | None) -> Result | None:
    """The restarted server's own counts: WebSocket upgrades and errors by code."""
    if metrics is None:
        return None
    errors = {
        name.split('code="', 1)[1].split('"', 1)[0]: int(value)
        for name, value in metrics.items()
        if name.startswith("courier_errors_total{") and 'code="' in name
    }
    return {
        "ws_upgrades": {
            front: int(metrics.get(f'courier_ws_upgrades_total{{front="{front}"}}', 0))
            for front in ("lean", "aiohttp")
        },
        "errors": errors,
    }


@dataclass
class Timeline:
    kill_ns: int = 0
    restart_ns: int = 0
    ready_ns: int = 0
    all_back: bool = False
    drained: bool = False
    sender_done: bool = False
    expected: int = 0
    server_cpu_s: float = 0.0
    startup_cpu_s: float | None = None  # the restarted server, until it listened
    reconnect_cpu_s: float | None = None  # the restarted server, from listening to all back
    listening_ns: int = 0
    kernel_before: dict[str, int] = field(default_factory=dict)
    kernel_after: dict[str, int] = field(default_factory=dict)
    server_after: Result | None = None


def worst_lag_ms(crowds: list[Result], since_ns: int, until_ns: int) -> float | None:
    """The worst event-loop lag of any driver process between two instants, in ms."""
    first, last = since_ns // BUCKET_NS, until_ns // BUCKET_NS
    lags = [v for c in crowds for k, v in c["lag"].items() if first <= k <= last]
    return round(max(lags) / 1e6, 1) if lags else None


def percentiles_ms(values_ns: list[int]) -> Result:
    latency = Latency()
    for v in values_ns:
        latency.record_ns(v)
    return latency.summary_ms()


def busiest(buckets: list[dict[int, int]], since_ns: int) -> tuple[int, int, list[int]]:
    """(busiest 100 ms count, total, counts per 100 ms) of the merged buckets from `since_ns`."""
    merged: Counter[int] = Counter()
    for b in buckets:
        merged.update(b)
    first = since_ns // BUCKET_NS
    counts = [c for k, c in merged.items() if k >= first]
    last = max(merged, default=first)
    series = [merged.get(k, 0) for k in range(first, min(last, first + 600) + 1)]
    return (max(counts) if counts else 0), sum(counts), series


async def run(settings: Settings) -> Result:
    plan = plan_for(settings)
    users = math.ceil(plan.clients / DEVICES_PER_USER)
    with tempfile.TemporaryDirectory(prefix="courier-bench-r1-") as tmp:
        server = ServerProcess(
            Path(tmp) / "data", settings.out_dir / "server-R1.log", extra_env=CHEAP_HASHING
        )
        await server.start()
        try:
            return await storm(plan, users, server)
        finally:
            code = await asyncio.to_thread(server.stop)
            console.log(f"R1: server stopped (exit {code})")


async def storm(plan: Plan, users: int, server: ServerProcess) -> Result:
    names, tokens = await fresh_accounts(server.url, "r1", users + 1)
    sender, recipients = names[0], names[1:]
    procs = max(1, math.ceil(plan.clients / PER_PROCESS))
    ctx = mp.get_context("spawn")
    shared = Shared(
        stop_sending=ctx.Value("q", 0, lock=False),
        sender_done=ctx.Value("q", 0, lock=False),
        up=ctx.Array("q", procs, lock=False),
        back=ctx.Array("q", procs, lock=False),
        received=ctx.Array("q", procs, lock=False),
        acked=ctx.Array("q", users, lock=False),
    )
    client_users = [i % users for i in range(plan.clients)]
    jobs: list[DeviceJob | SenderJob] = [
        DeviceJob(
            p,
            server.url,
            source_ip(p),
            client_users[p::procs],
            [tokens[recipients[u]] for u in client_users[p::procs]],
            shared,
            plan.connect_budget_s,
            plan.schedule,
        )
        for p in range(procs)
    ]
    jobs.append(
        SenderJob(server.url, tokens[sender], recipients, plan.rate, plan.finish_budget_s, shared)
    )
    devices_of = Counter(client_users)
    sampler = Sampler()
    line = Timeline()

    def go() -> None:
        sampler.pid = server.pid
        sampler.start()
        line.kernel_before = kernel_counters()

    async def orchestrate(_held: list[Result]) -> None:
        await asyncio.sleep(plan.warm_s)
        await asyncio.to_thread(sampler.sample)
        line.server_cpu_s = proc_cpu_seconds(server.pid)
        line.kill_ns = time.perf_counter_ns()
        console.log("R1: SIGKILL")
        sampler.pid = None
        await asyncio.to_thread(server.kill)
        sampler.phase = "after_restart"
        line.restart_ns = time.perf_counter_ns()
        server.launch()
        sampler.pid = server.pid
        if await server.wait_listening():
            line.listening_ns = time.perf_counter_ns()
            line.startup_cpu_s = proc_cpu_seconds(server.pid)
        await server.wait_healthy(60)
        line.ready_ns = time.perf_counter_ns()
        console.log(
            f"R1: restarted, listening after {(line.listening_ns - line.restart_ns) / 1e9:.2f} s"
            f", /healthz after {(line.ready_ns - line.restart_ns) / 1e9:.2f} s"
        )
        line.all_back = await wait_until(
            lambda: sum(shared.back[:]) >= plan.clients, plan.back_budget_s
        )
        console.log(f"R1: {sum(shared.back[:])} of {plan.clients} clients back")
        if line.startup_cpu_s is not None:
            line.reconnect_cpu_s = proc_cpu_seconds(server.pid) - line.startup_cpu_s
        await asyncio.sleep(plan.after_s)
        shared.stop_sending.value = 1
        line.sender_done = await wait_until(
            lambda: bool(shared.sender_done.value), plan.finish_budget_s + 15
        )
        line.expected = sum(shared.acked[u] * devices_of[u] for u in range(users))
        line.drained = await wait_until(
            lambda: sum(shared.received[:]) >= line.expected, plan.drain_budget_s
        )
        await asyncio.to_thread(sampler.sample)
        line.server_cpu_s += proc_cpu_seconds(server.pid)
        line.kernel_after = kernel_counters()
        line.server_after = server_view(await read_metrics(server.url))

    budget = (
        plan.connect_budget_s
        + plan.warm_s
        + 60  # the restart
        + plan.back_budget_s
        + plan.after_s
        + plan.finish_budget_s
        + plan.drain_budget_s
        + 120
    )
    try:
        _, done = await run_workers(
            storm_worker,
            list(jobs),
            label="R1 clients up",
            total=plan.clients,
            budget_s=budget,
            on_go=go,
            on_held=orchestrate,
        )
    finally:
        await sampler.stop()
    return figures(plan, users, procs, line, sampler, done[:-1], done[-1])


def figures(
    plan: Plan,
    users: int,
    procs: int,
    line: Timeline,
    sampler: Sampler,
    crowds: list[Result],
    sent: Result,
) -> Result:
    back = [b for c in crowds for b in c["back_ns"] if b]
    dropped = [d for c in crowds for d in c["dropped_ns"]]
    offline = [
        b - d for c in crowds for d, b in zip(c["dropped_ns"], c["back_ns"], strict=True) if b
    ]
    delivery = Latency()
    for c in crowds:
        delivery.add_encoded(c["delivery"])
    ack_latency = Latency()
    ack_latency.add_encoded(sent["ack_latency"])
    attempts_peak, attempts, attempts_series = busiest(
        [c["attempts"] for c in crowds], line.kill_ns
    )
    returns_peak, _, returns_series = busiest([c["returns"] for c in crowds], line.kill_ns)
    failures: Counter[str] = Counter()
    for c in crowds:
        failures.update(c["failures"])
    last_back = max(back) if back else None

    def total(key: str) -> int:
        return sum(int(c[key]) for c in crowds)

    return {
        "workload": "R1",
        "clients": plan.clients,
        "users": users,
        "devices_per_user": DEVICES_PER_USER,
        "backoff": plan.schedule,
        "driver_procs": procs,
        "rate_msg_per_s": plan.rate,
        "dropped": sum(1 for d in dropped if d),
        "back": len(back),
        "never_back": total("never_back"),
        "drops": total("drops"),
        "all_back": line.all_back,
        "restart_to_listening_s": (
            rnd((line.listening_ns - line.restart_ns) / 1e9) if line.listening_ns else None
        ),
        "restart_to_healthz_s": rnd((line.ready_ns - line.restart_ns) / 1e9),
        "restart_to_all_back_s": rnd((last_back - line.restart_ns) / 1e9) if last_back else None,
        "listening_to_all_back_s": (
            rnd((last_back - line.listening_ns) / 1e9) if last_back and line.listening_ns else None
        ),
        "kill_to_all_back_s": rnd((last_back - line.kill_ns) / 1e9) if last_back else None,
        "reconnect_after_restart_ms": percentiles_ms([b - line.restart_ns for b in back]),
        "offline_per_client_ms": percentiles_ms(offline),
        "connect_attempts": attempts,
        "failed_attempts": sum(failures.values()),
        "failure_causes": dict(failures),
        "failure_sample": sorted({f for c in crowds for f in c["failure_sample"]})[:5],
        "busiest_100ms_attempts": attempts_peak,
        "busiest_100ms_returns": returns_peak,
        "attempts_per_100ms": attempts_series,
        "driver_loop_lag_ms_max": worst_lag_ms(crowds, line.kill_ns, last_back or line.kill_ns),
        "returns_per_100ms": returns_series,
        "messages_sent": int(sent["started"]),
        "messages_acknowledged": int(sent["acknowledged"]),
        "expected_deliveries": line.expected,
        "delivered": total("received"),
        "drained": line.drained,
        "sender_done": line.sender_done,
        "lost": total("lost"),
        "duplicated": total("duplicated"),
        "reordered": total("reordered"),
        "seq_gaps": total("seq_gaps"),
        "unacked_delivered": total("unacked_delivered"),
        "send_errors": int(sent["refused"]) + int(sent["given_up"]),
        "send_retries": int(sent["retries"]),
        "send_retry_causes": sent["causes"],
        "send_ack_ms": ack_latency.summary_ms(),
        "delivery_ms": delivery.summary_ms(),
        "server_rss_peak_kib": sampler.rss,
        "server_fds_peak": sampler.fds,
        "server_samples": sampler.samples,
        "server_after_restart": line.server_after,
        "kernel_tcp": {
            name: line.kernel_after[name] - line.kernel_before[name]
            for name in KERNEL_COUNTERS
            if name in line.kernel_after and name in line.kernel_before
        },
        "server_cpu_s": rnd(line.server_cpu_s),
        "server_startup_cpu_s": rnd(line.startup_cpu_s),
        "server_reconnect_cpu_s": rnd(line.reconnect_cpu_s),
        "driver_cpu_s": rnd(sum(float(c["process_cpu_s"]) for c in crowds)),
    }
