"""W6: group fan-out. One group of 500 members, all online on WebSockets spread over several
driver processes; 5 of them send 200 messages each, at most 5 unanswered at a time.

Figures: member-deliveries per second, send to the LAST member's receipt of the frame (p50,
p99), server CPU per 100K deliveries, store bytes written per group message (the growth of
the data directory: write-ahead log and tables, as RocksDB wrote them, against the 100-byte
body), and lost / duplicated / reordered per member (all must be 0).
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from bench.accounts import fresh_accounts
from bench.common import BODY_SIZE, CpuMeter, Latency, Result, Settings, Target, console, rnd
from bench.drivers import WorkerLink, run_loop, run_workers
from bench.lean_ws import open_socket
from bench.server import ServerProcess

SENDERS = 5
WINDOW = 5
TARGETS = {"deliveries_per_s": 100_000, "p99_ms": 250, "store_bytes_per_body": 20}


class _Frame(msgspec.Struct):
    type: str
    seq: int = 0
    client_id: str = ""
    group: str = ""


_decode = msgspec.json.Decoder(_Frame).decode


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _worker(job: dict[str, Any], link: WorkerLink) -> Result:
    return run_loop(_drive(job, link))


async def _drive(job: dict[str, Any], link: WorkerLink) -> Result:
    url = urlsplit(job["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    gid, count, total = job["gid"], job["count"], job["total"]
    members: list[tuple[str, str]] = job["members"]
    senders: set[str] = set(job["senders"])
    # per member: the seqs and client_ids of the group messages it got, in arrival order
    got: dict[str, list[tuple[int, str]]] = {name: [] for name, _ in members}
    last_ns: dict[str, int] = {}
    sent_ns: dict[str, int] = {}
    windows: dict[str, asyncio.Semaphore] = {}
    done = asyncio.Event()
    expected = {name: total - (count if name in senders else 0) for name, _ in members}
    pending = {name for name in expected if expected[name] > 0}
    received = 0

    def on_text(name: str, payload: bytes) -> None:
        nonlocal received
        frame = _decode(payload)
        if frame.type == "message" and frame.group == gid:
            got[name].append((frame.seq, frame.client_id))
            last_ns[frame.client_id] = time.perf_counter_ns()
            received += 1
            link.count(received)
            if len(got[name]) >= expected[name]:
                pending.discard(name)
                if not pending:
                    done.set()
        elif frame.type == "sent" and name in windows:
            windows[name].release()

    sockets = {}
    for name, token in members:
        sockets[name] = await open_socket(host, port, "/v1/ws", token, partial(on_text, name))
    await link.ready()

    async def send_all(name: str) -> None:
        window = windows[name] = asyncio.Semaphore(WINDOW)
        body = "x" * BODY_SIZE
        for i in range(count):
            await window.acquire()
            cid = f"{name}-{i}"
            frame = {"type": "send", "group": gid, "body": body, "client_id": cid}
            sent_ns[cid] = time.perf_counter_ns()
            sockets[name].send_text(msgspec.json.encode(frame))

    acked: dict[str, int] = {}

    async def ack_now_and_then() -> None:
        """Members acknowledge what they got, coalesced every 100 ms, as clients do (the web
        app after 150 ms, the SDK per batch): acks are part of a group's cost."""
        while True:
            await asyncio.sleep(0.1)
            for name, frames in got.items():
                if frames and frames[-1][0] > acked.get(name, 0):
                    acked[name] = frames[-1][0]
                    sockets[name].send_text(b'{"type":"ack","seq":%d}' % acked[name])

    acks = asyncio.create_task(ack_now_and_then())
    tasks = [asyncio.create_task(send_all(n)) for n in senders if n in sockets]
    timed_out = False
    try:
        async with asyncio.timeout(job["budget_s"]):
            await asyncio.gather(*tasks)
            if pending:
                await done.wait()
    except TimeoutError:
        timed_out = True
    acks.cancel()
    lost = dup = reordered = 0
    for name, frames in got.items():
        cids = [c for _, c in frames]
        seqs = [s for s, _ in frames]
        dup += len(cids) - len(set(cids))
        lost += max(expected[name] - len(set(cids)), 0)
        reordered += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        per_sender: dict[str, int] = {}
        for cid in cids:  # each sender's messages in the order sent
            sender, _, n = cid.rpartition("-")
            if int(n) < per_sender.get(sender, -1):
                reordered += 1
            per_sender[sender] = int(n)
    for sock in sockets.values():
        sock.abort()
    return {
        "deliveries": received,
        "lost": lost,
        "duplicated": dup,
        "reordered": reordered,
        "last_ns": last_ns,
        "sent_ns": sent_ns,
        "timed_out": timed_out,
    }


async def _create_group(url: str, owner_token: str, members: list[str]) -> str:
    async with aiohttp.ClientSession() as http:
        body = {"name": "W6", "members": members}
        headers = {"Authorization": f"Bearer {owner_token}"}
        async with http.post(url + "/v1/groups", json=body, headers=headers) as resp:
            data = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"group creation failed: {resp.status} {data}")
            gid: str = data["id"]
            return gid


async def run_against(
    settings: Settings,
    target: Target,
    data_dir: Path | None,
    label: str = "W6",
    urls: list[str] | None = None,
) -> Result:
    members_n, count = (100, 50) if settings.quick else (500, 200)
    drivers = max(2, settings.w1_drivers)
    names, tokens = await fresh_accounts(target.url, label.lower(), members_n)
    gid = await _create_group(target.url, tokens[names[0]], names[1:])
    senders = names[:SENDERS]
    parts = [names[i::drivers] for i in range(drivers)]
    total = SENDERS * count
    urls = urls or [target.url]
    jobs = [
        {
            "url": urls[i % len(urls)],
            "gid": gid,
            "count": count,
            "total": total,
            "members": [(n, tokens[n]) for n in part],
            "senders": [n for n in senders if n in part],
            "budget_s": 240,
        }
        for i, part in enumerate(parts)
    ]
    meter = CpuMeter(target)
    before = dir_bytes(data_dir) if data_dir is not None else None
    started_ns = 0

    def go() -> None:
        nonlocal started_ns
        meter.start()
        started_ns = time.perf_counter_ns()

    expected = total * members_n - SENDERS * count
    _, results = await run_workers(
        _worker, jobs, label=f"{label} deliveries", total=expected, budget_s=400, on_go=go
    )
    meter.stop()
    await asyncio.sleep(0.5)
    grown = dir_bytes(data_dir) - before if data_dir is not None and before is not None else None
    last: dict[str, int] = {}
    sent: dict[str, int] = {}
    for r in results:
        for cid, ns in r["last_ns"].items():
            last[cid] = max(last.get(cid, 0), ns)
        sent.update(r["sent_ns"])
    latency = Latency()
    for cid, t0 in sent.items():
        if cid in last:
            latency.record_ns(last[cid] - t0)
    deliveries = sum(r["deliveries"] for r in results)
    end_ns = max(last.values(), default=started_ns)
    seconds = (end_ns - started_ns) / 1e9 if end_ns > started_ns else None
    per_message = grown / total if grown is not None else None
    figures = meter.figures(deliveries)
    out: Result = {
        "workload": label,
        "members": members_n,
        "senders": SENDERS,
        "per_sender": count,
        "window": WINDOW,
        "driver_procs": drivers,
        "deliveries": deliveries,
        "seconds": rnd(seconds),
        "deliveries_per_s": rnd(deliveries / seconds, 1) if seconds else None,
        "latency_to_last_member_ms": latency.summary_ms(),
        "server_cpu_s": figures["server_cpu_s"],
        "server_cpu_s_per_100k_deliveries": figures["server_cpu_s_per_100k"],
        "store_bytes_per_message": rnd(per_message, 1),
        "store_bytes_per_body": rnd(per_message / BODY_SIZE, 2) if per_message else None,
        "lost": sum(r["lost"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results),
        "reordered": sum(r["reordered"] for r in results),
        "target": TARGETS,
    }
    if any(r["timed_out"] for r in results):
        out["timed_out"] = True
    return out


async def run(settings: Settings) -> Result:
    """On a server of its own (its data directory is measured)."""
    with tempfile.TemporaryDirectory(prefix="courier-bench-w6-") as tmp:
        data = Path(tmp) / "data"
        server = ServerProcess(data, settings.out_dir / "server-W6.log")
        await server.start()
        try:
            return await run_against(settings, Target(server.url, server.pid), data / "store")
        finally:
            code = await asyncio.to_thread(server.stop)
            console.log(f"W6: server stopped (exit {code})")


async def run_cluster(settings: Settings) -> Result:
    """W6C: the same over 2 cluster nodes; the members' connections alternate between them,
    so every group message reaches each node once through NATS."""
    from bench.cluster import local_cluster

    with local_cluster(2, settings.out_dir / "cluster-W6C") as cluster:
        result = await run_against(
            settings, cluster.target(), None, label="W6C", urls=list(cluster.urls)
        )
    result["nodes"] = 2
    result["adapters"] = "postgres x2, nats, redis"
    return result
