"""Sender/receiver pairs over WebSocket: the driver loop shared by W1 (window) and W5 (rate).

A sender sends `count` messages to its partner; each body carries the sequence number and a
perf_counter_ns timestamp. In window mode at most `window` sends are unacknowledged (no `sent`
yet); in rate mode every message has an intended send time, and latency is measured from that
time, so a stalled server is charged for the messages it delayed (no coordinated omission).
The receiver checks that it sees every sequence number once and in order, and acks
cumulatively every `ack_every` messages and at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp

from bench.client import close_all, connect, decode, encode, make_body, parse_body
from bench.common import Latency, Result
from bench.drivers import WorkerLink, run_loop


@dataclass(frozen=True)
class Pair:
    """Two accounts; each connects to its own URL when given, else to the job's."""

    sender: str
    sender_token: str
    receiver: str
    receiver_token: str
    sender_url: str = ""
    receiver_url: str = ""


@dataclass(frozen=True)
class PairsJob:
    url: str
    pairs: list[Pair]
    count: int
    budget_s: float
    window: int = 10
    rate_per_sender: float | None = None
    stagger_index: int = 0
    total_pairs: int = 1
    ack_every: int = 50


@dataclass
class Tally:
    delivered: int = 0
    duplicated: int = 0
    reordered: int = 0
    send_errors: int = 0
    sent: int = 0
    confirmed: int = 0
    disconnects: int = 0
    first_send_ns: int = 0
    last_recv_ns: int = 0
    error_sample: str = ""


class Receiver:
    def __init__(self, job: PairsJob, pair: Pair, tally: Tally, latency: Latency) -> None:
        self.job = job
        self.pair = pair
        self.tally = tally
        self.latency = latency
        self.seen = bytearray(job.count)
        self.unique = 0
        self.highest = -1

    async def run(self, ws: aiohttp.ClientWebSocketResponse, on_message: WorkerCounter) -> None:
        job, tally = self.job, self.tally
        since_ack = 0
        last_event_seq = 0
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.perf_counter_ns()
            frame = decode(msg.data)
            if frame.get("type") != "message" or frame.get("from") != self.pair.sender:
                continue
            seq, ts = parse_body(frame["body"])
            self.latency.record_ns(now - ts)
            tally.last_recv_ns = max(tally.last_recv_ns, now)
            last_event_seq = int(frame["seq"])
            if 0 <= seq < job.count and not self.seen[seq]:
                self.seen[seq] = 1
                self.unique += 1
                tally.delivered += 1
                if seq < self.highest:
                    tally.reordered += 1
                self.highest = max(self.highest, seq)
                on_message()
            else:
                tally.duplicated += 1
            since_ack += 1
            if since_ack >= job.ack_every or self.unique == job.count:
                await ws.send_str(encode({"type": "ack", "seq": last_event_seq}))
                since_ack = 0
            if self.unique == job.count:
                return
        tally.disconnects += 1
        tally.error_sample = tally.error_sample or f"receiver closed: {ws.close_code}"


class WorkerCounter:
    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self.n = 0

    def __call__(self) -> None:
        self.n += 1
        if self.n % 200 == 0:
            self.link.count(self.n)


async def send_loop(
    job: PairsJob,
    pair: Pair,
    ws: aiohttp.ClientWebSocketResponse,
    tally: Tally,
    start_ns: int,
    offset_ns: int,
) -> None:
    window = asyncio.Semaphore(job.window) if job.rate_per_sender is None else None
    confirmed = 0
    all_confirmed = asyncio.Event()

    async def read_answers() -> None:
        nonlocal confirmed
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = decode(msg.data)
            kind = frame.get("type")
            if kind == "sent":
                confirmed += 1
            elif kind == "error":
                confirmed += 1
                tally.send_errors += 1
                tally.error_sample = tally.error_sample or str(msg.data)[:300]
            else:
                continue
            if window is not None:
                window.release()
            if confirmed >= job.count:
                all_confirmed.set()
                return
        tally.disconnects += 1
        tally.error_sample = tally.error_sample or f"sender closed: {ws.close_code}"
        all_confirmed.set()
        if window is not None:
            for _ in range(job.window):
                window.release()

    reader = asyncio.create_task(read_answers())
    try:
        interval_ns = 0 if job.rate_per_sender is None else int(1e9 / job.rate_per_sender)
        for i in range(job.count):
            if window is not None:
                await window.acquire()
                stamp = time.perf_counter_ns()
            else:
                stamp = start_ns + offset_ns + i * interval_ns
                delay = stamp - time.perf_counter_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
            if tally.first_send_ns == 0:
                tally.first_send_ns = time.perf_counter_ns()
            frame = {"type": "send", "to": pair.receiver, "body": make_body(i, stamp)}
            frame["client_id"] = f"c{i}"
            await ws.send_str(encode(frame))
            tally.sent += 1
        await all_confirmed.wait()
    finally:
        tally.confirmed += confirmed
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def run_pairs(job: PairsJob, link: WorkerLink) -> Result:
    tally = Tally()
    latency = Latency()
    counter = WorkerCounter(link)
    timeout = aiohttp.ClientTimeout(total=None, connect=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        senders = []
        receivers = []
        for pair in job.pairs:
            rws, _ = await connect(session, pair.receiver_url or job.url, pair.receiver_token)
            sws, _ = await connect(session, pair.sender_url or job.url, pair.sender_token)
            receivers.append(rws)
            senders.append(sws)
        start_ns = await link.ready()
        cpu_start = time.process_time()
        recvs = [Receiver(job, pair, tally, latency) for pair in job.pairs]
        interval_ns = 0 if job.rate_per_sender is None else 1e9 / job.rate_per_sender
        tasks = [
            asyncio.create_task(recv.run(ws, counter))
            for recv, ws in zip(recvs, receivers, strict=True)
        ]
        for k, (pair, ws) in enumerate(zip(job.pairs, senders, strict=True)):
            slot = job.stagger_index + k
            offset_ns = int(interval_ns * slot / max(1, job.total_pairs))
            tasks.append(asyncio.create_task(send_loop(job, pair, ws, tally, start_ns, offset_ns)))
        timed_out = False
        done, pending = await asyncio.wait(tasks, timeout=job.budget_s)
        if pending:
            timed_out = True
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        errors = [repr(t.exception()) for t in done if t.exception() is not None]
        cpu = time.process_time() - cpu_start
        link.count(counter.n)
        await close_all(senders + receivers)
    expected = job.count * len(job.pairs)
    return {
        "expected": expected,
        "delivered": tally.delivered,
        "lost": expected - tally.delivered,
        "duplicated": tally.duplicated,
        "reordered": tally.reordered,
        "sent": tally.sent,
        "confirmed": tally.confirmed,
        "send_errors": tally.send_errors,
        "disconnects": tally.disconnects,
        "error_sample": tally.error_sample,
        "task_errors": errors[:3],
        "timed_out": timed_out,
        "start_ns": start_ns,
        "first_send_ns": tally.first_send_ns,
        "last_recv_ns": tally.last_recv_ns,
        "latency": latency.encode(),
        "process_cpu_s": cpu,
    }


def pairs_worker(job: PairsJob, link: WorkerLink) -> Result:
    return run_loop(run_pairs(job, link))


def merge(results: list[Result]) -> tuple[Result, Latency]:
    """Sum the tallies of several driver processes and merge their histograms."""
    latency = Latency()
    total: Result = {
        k: sum(int(r[k]) for r in results)
        for k in (
            "expected",
            "delivered",
            "lost",
            "duplicated",
            "reordered",
            "sent",
            "confirmed",
            "send_errors",
            "disconnects",
        )
    }
    for r in results:
        latency.add_encoded(r["latency"])
    starts = [int(r["start_ns"]) for r in results]
    ends = [int(r["last_recv_ns"]) for r in results if r["last_recv_ns"]]
    total["seconds"] = (max(ends) - min(starts)) / 1e9 if ends else None
    total["timed_out"] = any(r["timed_out"] for r in results)
    total["error_sample"] = next((r["error_sample"] for r in results if r["error_sample"]), "")
    total["task_errors"] = [e for r in results for e in r["task_errors"]][:3]
    total["worker_cpu_s"] = [float(r["process_cpu_s"]) for r in results]
    return total, latency
