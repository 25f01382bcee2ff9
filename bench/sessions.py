"""Sessions on the RocksDB store, no sockets: what a token costs per request, what a recorded
use, a listing and an end cost, and how long the first start of a store written before
sessions were listed takes to index its tokens. One JSON line per figure on stdout.

    python -m bench.sessions [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from argon2 import PasswordHasher

from courier.adapters import rocks_keys as K
from courier.adapters.local_broker import LocalBroker
from courier.adapters.rocks_store import RocksStore
from courier.domain.ops import PutToken
from courier.metrics import Metrics
from courier.service.accounts import HOUR_MS, SESSIONS_MAX, Accounts, hash_token, now_ms


class Clock:
    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now


def commits(metrics: Metrics) -> float:
    for family in metrics.store_batch_size.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


def emit(name: str, **figures: Any) -> None:
    print(json.dumps({"bench": "sessions", "name": name, **figures}), flush=True)


async def timed(calls: int, fn: Any) -> list[float]:
    """Microseconds per call of the coroutine function `fn(i)`, one call at a time."""
    out: list[float] = []
    for i in range(calls):
        t0 = time.perf_counter()
        await fn(i)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "calls": len(samples),
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
    }


async def requests(root: Path, quick: bool) -> None:
    metrics = Metrics()
    store = RocksStore(str(root / "store"), metrics=metrics)
    await store.open()
    clock = Clock()
    accounts = Accounts(
        store, LocalBroker(), PasswordHasher(time_cost=1, memory_cost=8192), clock=clock
    )
    try:
        await accounts.register("bench", "bench-password")
        token = await accounts.login("bench", "bench-password", user_agent="bench")
        session = await accounts.authenticate(token)

        before = commits(metrics)
        auth = await timed(2_000 if quick else 20_000, lambda i: accounts.authenticate(token))
        emit(
            "authenticate, used within the hour", **summary(auth), commits=commits(metrics) - before
        )

        async def touched(i: int) -> None:
            clock.now += HOUR_MS
            await accounts.authenticate(token)

        before = commits(metrics)
        touch = await timed(200 if quick else 2_000, touched)
        emit("authenticate, recording a use", **summary(touch), commits=commits(metrics) - before)

        # The same listing for a user whose sessions never moved, and for this one, whose
        # session has left a deleted index key behind at every recorded use (RocksDB drops
        # them at compaction; a real session leaves at most one an hour).
        await accounts.register("lister", "bench-password")
        lister = await accounts.authenticate(await accounts.login("lister", "bench-password"))
        for user in ("lister", "bench"):
            for i in range(SESSIONS_MAX - 1):
                h = hash_token(f"{user} {i}")
                await store.submit(PutToken(h, user, h[:8].hex(), clock.now - i - 1, "other"))
        calls = 500 if quick else 5_000
        listing = await timed(calls, lambda i: accounts.sessions(lister))
        emit(f"list {SESSIONS_MAX} sessions", **summary(listing))
        listing = await timed(calls, lambda i: accounts.sessions(session))
        emit(
            f"list {SESSIONS_MAX} sessions, {len(touch)} uses recorded, not compacted",
            **summary(listing),
        )

        ids = [s.id for s in await accounts.sessions(lister) if not s.current]
        ending = await timed(len(ids), lambda i: accounts.end_session(lister, ids[i]))
        emit("end a session", **summary(ending))
    finally:
        accounts.close()
        await store.close()


async def first_start(root: Path, quick: bool) -> None:
    """A store with old-format tokens (and no format key), opened by this version."""
    tokens = 10_000 if quick else 100_000
    path = str(root / "old")
    store = RocksStore(path)
    await store.open()
    await store.close()
    from rocksdict import Options, Rdict, WriteBatch

    db = Rdict(path, Options(raw_mode=True))
    created = now_ms()
    wb = WriteBatch(raw_mode=True)
    for i in range(tokens):
        h = hash_token(f"old {i}")
        old = {"username": f"user{i % 1000}", "device": h[:8].hex(), "created": created}
        wb.put(K.token_key(h), msgspec.msgpack.encode(old))
    wb.delete(K.FORMAT_KEY)
    db.write(wb)
    db.close()

    for label in ("first start (indexes)", "next start"):
        store = RocksStore(path)
        t0 = time.perf_counter()
        await store.open()
        seconds = time.perf_counter() - t0
        listed = len(await store.sessions("user7", 1000))
        await store.close()
        emit(label, tokens=tokens, open_s=round(seconds, 3), listed_for_one_user=listed)


async def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="courier-bench-sessions-") as tmp:
        await requests(Path(tmp), quick)
        await first_start(Path(tmp), quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    asyncio.run(asyncio.wait_for(main(args.quick), 600))
    sys.exit(0)
