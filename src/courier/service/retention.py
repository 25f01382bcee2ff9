"""Configurable retention: the seed's "limited offline messages". Off by default.

A background sweep drops timeline events older than N days, a bounded number of users per
store batch so live traffic never waits behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from courier.domain.ops import Sweep
from courier.metrics import Metrics
from courier.ports import Store

log = logging.getLogger(__name__)

USERS_PER_BATCH = 50


async def sweep_once(store: Store, days: float, metrics: Metrics | None = None) -> int:
    """Drop everything older than `days` for every user; return how many events went."""
    cutoff = int((time.time() - days * 86400) * 1000)
    start, total = "", 0
    while True:
        dropped: int
        last: str
        dropped, last = await store.submit(Sweep(cutoff, start, USERS_PER_BATCH))
        total += dropped
        if metrics is not None and dropped:
            metrics.retention_dropped.inc(dropped)
        if not last:
            return total
        start = last
        await asyncio.sleep(0)


async def run_retention(
    store: Store, days: float, interval: float, metrics: Metrics | None = None
) -> None:
    while True:
        try:
            dropped = await sweep_once(store, days, metrics)
            if dropped:
                log.info("retention: dropped %d events older than %s days", dropped, days)
        except Exception:
            log.exception("retention sweep failed; trying again next interval")
        await asyncio.sleep(interval)
