"""W2: offline drain. The receiver is offline while the sender sends; then it connects with
`after=0`, and the figure is the time from connect start to the last message received."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.accounts import fresh_accounts
from bench.client import close_all, connect, decode, make_body, parse_body
from bench.common import CpuMeter, Result, Settings, Target, progress, rnd
from courier.client import Client, CourierError

COUNT = 2000


async def send_all(url: str, token: str, to: str, count: int) -> int:
    """The sender, through the Python SDK (this phase is not measured): each send is retried
    with its client_id until stored; returns how many were refused."""
    errors = 0
    async with Client(url, token) as client:
        for i in range(count):
            try:
                await client.send(to, make_body(i, time.perf_counter_ns()), client_id=f"c{i}")
            except CourierError:
                errors += 1
    return errors


async def run(settings: Settings, target: Target) -> Result:
    names, tokens = await fresh_accounts(target.url, "w2", 2)
    sender, receiver = names
    timeout = aiohttp.ClientTimeout(total=None, connect=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with progress() as bar:
            bar.add_task("W2 sending (receiver offline)", total=None)
            async with asyncio.timeout(300):
                send_errors = await send_all(target.url, tokens[sender], receiver, COUNT)
        meter = CpuMeter(target)
        meter.start()
        got = reordered = 0
        expected = 0
        started = time.perf_counter()
        last = started
        ws, _ = await connect(session, target.url, tokens[receiver], after=0)
        try:
            async with asyncio.timeout(120):
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = decode(msg.data)
                    if frame.get("type") != "message" or frame.get("from") != sender:
                        continue
                    last = time.perf_counter()
                    seq, _ = parse_body(frame["body"])
                    reordered += seq != expected
                    expected = seq + 1
                    got += 1
                    if got == COUNT:
                        break
        except TimeoutError:
            pass
        meter.stop()
        await close_all([ws])
    return {
        "workload": "W2",
        "msgs": got,
        "seconds": rnd(last - started),
        "msg_per_s": rnd(got / (last - started), 1) if last > started else None,
        "correct": got == COUNT and reordered == 0 and send_errors == 0,
        "lost": COUNT - got,
        "reordered": reordered,
        "send_errors": send_errors,
        **meter.figures(got),
    }
