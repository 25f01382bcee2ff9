"""What R1's processes share: the live counters in shared memory, message bodies, and a
polling wait (the counters live in another process, so there is no event to await)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray

from bench.common import BODY_SIZE

BUCKET_NS = 100_000_000  # attempts and returns are counted per 100 ms


@dataclass(frozen=True)
class Shared:
    """What the parent and the driver processes see of each other while the run goes on."""

    stop_sending: Synchronized[int]
    sender_done: Synchronized[int]
    up: SynchronizedArray[int]  # per device process: clients connected now
    back: SynchronizedArray[int]  # per device process: clients back after their first drop
    received: SynchronizedArray[int]  # per device process: distinct messages received
    acked: SynchronizedArray[int]  # per user: highest message number acknowledged to it


def make_body(n: int) -> str:
    """The message number (per recipient) and a perf_counter_ns stamp, padded to 100."""
    head = f"{n:08d} {time.perf_counter_ns():020d} "
    return head + "x" * (BODY_SIZE - len(head))


async def wait_until(check: Callable[[], bool], budget_s: float) -> bool:
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()
