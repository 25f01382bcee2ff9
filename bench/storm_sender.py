"""R1's sender: messages to every user at a fixed rate over HTTP, each POST retried with its
client_id until the server answers for it, through the kill and the restart."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from bench.common import Latency, Result
from bench.drivers import WorkerLink
from bench.storm_shared import Shared, make_body, wait_until
from courier.client.backoff import backoff

LANES = 16  # parallel HTTP sends; each lane owns a share of the recipients, sent in order


@dataclass(frozen=True)
class SenderJob:
    url: str
    token: str
    recipients: list[str]
    rate: float
    budget_s: float
    shared: Shared


@dataclass
class SendTally:
    started: int = 0
    acknowledged: int = 0
    retries: int = 0  # failed attempts, retried with the same client_id
    refused: int = 0  # answers no retry can change (must be 0)
    given_up: int = 0  # still unanswered when the sender's time ran out (must be 0)
    causes: Counter[str] = field(default_factory=Counter)
    ack_latency: Latency = field(default_factory=Latency)


async def send_one(
    session: aiohttp.ClientSession,
    job: SenderJob,
    to: str,
    n: int,
    tally: SendTally,
    deadline: list[float],
) -> bool:
    """POST one message until the server answers for it (same client_id on every try)."""
    payload = {"to": to, "body": make_body(n), "client_id": f"r1-{to}-{n}"}
    headers = {"Authorization": f"Bearer {job.token}"}
    t0 = time.perf_counter_ns()
    attempt = 0
    while time.monotonic() < deadline[0]:
        try:
            async with session.post(
                f"{job.url}/v1/messages", json=payload, headers=headers
            ) as resp:
                await resp.read()
                if resp.status in (200, 201):
                    tally.acknowledged += 1
                    tally.ack_latency.record_ns(time.perf_counter_ns() - t0)
                    return True
                tally.causes[f"http_{resp.status}"] += 1
                if resp.status != 429 and resp.status < 500:
                    tally.refused += 1
                    return False
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            tally.causes[type(exc).__name__] += 1
        tally.retries += 1
        await asyncio.sleep(backoff(attempt))
        attempt += 1
    tally.given_up += 1
    return False


async def run_sender(job: SenderJob, link: WorkerLink) -> Result:
    tally = SendTally()
    acked = [0] * len(job.recipients)
    timeout = aiohttp.ClientTimeout(total=15)
    connector = aiohttp.TCPConnector(limit=LANES * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start_ns = await link.ready()
        held = asyncio.create_task(link.held({}, wait_s=3600))
        interval_ns = int(1e9 * LANES / job.rate)
        numbers = [0] * len(job.recipients)
        deadline = [math.inf]

        async def lane(k: int) -> None:
            mine = list(range(k, len(job.recipients), LANES))
            i = 0
            while not job.shared.stop_sending.value:
                due = start_ns + (k * interval_ns) // LANES + i * interval_ns
                delay = due - time.perf_counter_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                r = mine[i % len(mine)]
                i += 1
                numbers[r] += 1
                tally.started += 1
                if await send_one(session, job, job.recipients[r], numbers[r], tally, deadline):
                    acked[r] = numbers[r]

        lanes = [asyncio.create_task(lane(k)) for k in range(min(LANES, len(job.recipients)))]
        await wait_until(lambda: bool(job.shared.stop_sending.value), math.inf)
        deadline[0] = time.monotonic() + job.budget_s
        await asyncio.gather(*lanes)
        for r, n in enumerate(acked):
            job.shared.acked[r] = n
        job.shared.sender_done.value = 1
        await held
    return {
        "started": tally.started,
        "acknowledged": tally.acknowledged,
        "retries": tally.retries,
        "refused": tally.refused,
        "given_up": tally.given_up,
        "causes": dict(tally.causes),
        "ack_latency": tally.ack_latency.encode(),
    }
