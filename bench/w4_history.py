"""W4: history pages. A store of many messages, built once through the store API and reused,
holds one 10,000-message conversation; a server on that data pages back through it 50 at a
time with `before=next_before`."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import aiohttp
from argon2 import PasswordHasher
from rich.progress import Progress, TaskID
from rocksdict import BottommostLevelCompaction, CompactOptions

from bench.accounts import fresh_accounts
from bench.client import login, run_prefix
from bench.common import (
    BODY_SIZE,
    PASSWORD,
    CpuMeter,
    Latency,
    Result,
    Settings,
    Target,
    progress,
)
from bench.server import ServerProcess
from bench.store_load import append_all, create_users
from bench.w2_drain import send_all
from courier.adapters.rocks_store import RocksStore

CONVERSATION = 10_000
PAGE = 50
PAGES_BACK = 20
REPEATS = 20
MARKER = "complete.json"
STORE_SUBDIR = "store"
BUILD_LIMIT_S = 3600
STATE = "build-state.json"
CHECKPOINT = 100_000


def store_path(data_dir: Path) -> Path:
    """Where `courier serve --data-dir DIR` keeps its RocksDB."""
    return data_dir / STORE_SUBDIR


def plan(total: int, users: list[str], a: str, b: str, seed: int = 7) -> Iterator[tuple[str, str]]:
    """`total` messages among `users`, with the a<->b conversation spread evenly through it."""
    rng = random.Random(seed)
    every = max(1, total // CONVERSATION)
    in_conversation = 0
    for i in range(total):
        if i % every == 0 and in_conversation < CONVERSATION:
            yield (a, b) if in_conversation % 2 == 0 else (b, a)
            in_conversation += 1
            continue
        s, r = rng.sample(users, 2)
        while {s, r} == {a, b}:
            s, r = rng.sample(users, 2)
        yield s, r


def prepare(data_dir: Path, total: int) -> Result:
    """The build state: a complete store's marker, a build to resume, or a fresh plan."""
    marker = data_dir / MARKER
    if marker.exists():
        info: Result = json.loads(marker.read_text())
        if info.get("messages") == total:
            return {**info, "complete": True}
    state_file = data_dir / STATE
    if state_file.exists():
        state: Result = json.loads(state_file.read_text())
        if state.get("total") == total:
            return state
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    state = {
        "total": total,
        "prefix": run_prefix("w4"),
        "users": max(100, min(1000, total // 10_000)),
        "done": 0,
        "build_s": 0.0,
    }
    save(data_dir / STATE, state)
    return state


def advance(bar: Progress, task: TaskID, first: int, n: int) -> None:
    bar.update(task, completed=first + n)


def save(path: Path, state: Result) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


async def build(data_dir: Path, total: int) -> Result:
    """Build the store, resuming an interrupted build, or reuse a complete one; returns the
    marker's content. Checkpoints every CHECKPOINT messages; the plan is deterministic and
    client ids follow it, so messages appended after the last checkpoint are not doubled."""
    state = prepare(data_dir, total)
    if state.get("complete"):
        return await settle(data_dir, state)
    users = [f"{state['prefix']}-{i}" for i in range(int(state["users"]))]
    a, b = users[0], users[1]
    store = RocksStore(str(store_path(data_dir)))
    await store.open()
    started = time.perf_counter()
    spent = float(state["build_s"])
    try:
        await create_users(store, users, PasswordHasher().hash(PASSWORD))
        pending = itertools.islice(plan(total, users, a, b), int(state["done"]), None)
        with progress() as bar:
            task = bar.add_task("W4 building store", total=total, completed=state["done"])
            async with asyncio.timeout(BUILD_LIMIT_S):
                while state["done"] < total:
                    first = int(state["done"])
                    chunk = itertools.islice(pending, CHECKPOINT)
                    stored = await append_all(
                        store,
                        chunk,
                        "h" * BODY_SIZE,
                        on_progress=partial(advance, bar, task, first),
                        first_index=first,
                    )
                    state["done"] = first + stored
                    state["build_s"] = round(spent + time.perf_counter() - started, 1)
                    save(data_dir / STATE, state)
    except TimeoutError:
        raise RuntimeError(
            f"W4 store build stopped at {state['done']:,} of {total:,} messages after "
            f"{BUILD_LIMIT_S} s; the next run resumes it"
        ) from None
    finally:
        await store.close()
    info = {
        "messages": total,
        "users": state["users"],
        "reader": a,
        "peer": b,
        "build_s": state["build_s"],
    }
    save(data_dir / MARKER, info)
    return await settle(data_dir, info)


async def settle(data_dir: Path, info: Result) -> Result:
    """Compact the built store once, as a long-running server's background compactions would.

    A build through the store API rewrites each user's head and conversation metas in every
    batch, leaving tens of millions of superseded versions for compaction to drop. A server
    started for a few seconds on that store spends both cores on that backlog, so pages
    would measure the compaction rather than the reads."""
    if info.get("settled_s") is not None:
        return info
    store = RocksStore(str(store_path(data_dir)))
    await store.open()
    started = time.perf_counter()
    try:
        with progress() as bar:
            bar.add_task("W4 compacting the built store", total=None)
            whole = CompactOptions()  # rewrite every table, in the store's current format
            whole.set_bottommost_level_compaction(BottommostLevelCompaction.force())
            await asyncio.to_thread(store.db.compact_range, None, None, whole)
    finally:
        await store.close()
    info = {k: v for k, v in info.items() if k != "complete"}
    info["settled_s"] = round(time.perf_counter() - started, 1)
    save(data_dir / MARKER, info)
    return info


async def fill_conversation(url: str, session: aiohttp.ClientSession) -> Result:
    """Against a server we did not start: make the 10,000-message conversation over WS."""
    names, tokens = await fresh_accounts(url, "w4", 2)
    async with asyncio.timeout(600):
        await send_all(url, tokens[names[1]], names[0], CONVERSATION)
    return {"messages": None, "reader": names[0], "peer": names[1]}


async def page_through(
    session: aiohttp.ClientSession, url: str, token: str, peer: str, latency: Latency
) -> tuple[int, int, bool]:
    """Newest page, then PAGES_BACK pages back; returns (pages, messages, seqs descending)."""
    headers = {"Authorization": f"Bearer {token}"}
    before: int | None = None
    pages = messages = 0
    previous = 1 << 62
    descending = True
    for _ in range(PAGES_BACK + 1):
        params = {"limit": str(PAGE)}
        if before is not None:
            params["before"] = str(before)
        t0 = time.perf_counter_ns()
        async with session.get(
            f"{url}/v1/conversations/{peer}/messages", params=params, headers=headers
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"history page -> {resp.status}: {body[:300]!r}")
        latency.record_ns(time.perf_counter_ns() - t0)
        answer = json.loads(body)
        pages += 1
        messages += len(answer["messages"])
        for event in answer["messages"]:
            descending = descending and int(event["seq"]) < previous
            previous = int(event["seq"])
        before = answer.get("next_before")
        if before is None:
            break
    return pages, messages, descending


async def count_conversation(
    session: aiohttp.ClientSession, url: str, token: str, peer: str
) -> int:
    """Walk the whole conversation, 200 at a time; returns the number of distinct messages."""
    headers = {"Authorization": f"Bearer {token}"}
    seen: set[int] = set()
    before: int | None = None
    for _ in range(2 * CONVERSATION // 200 + 10):
        params = {"limit": "200"}
        if before is not None:
            params["before"] = str(before)
        async with session.get(
            f"{url}/v1/conversations/{peer}/messages", params=params, headers=headers
        ) as resp:
            answer = json.loads(await resp.read())
        seen.update(int(e["seq"]) for e in answer["messages"])
        before = answer.get("next_before")
        if before is None:
            break
    return len(seen)


async def measure(target: Target, info: Result, reader_token: str, settings: Settings) -> Result:
    latency = Latency()
    meter = CpuMeter(target)
    pages = messages = 0
    ordered = True
    async with aiohttp.ClientSession() as session:
        conversation = await count_conversation(session, target.url, reader_token, info["peer"])
        await page_through(session, target.url, reader_token, info["peer"], Latency())  # warm-up
        meter.start()
        with progress() as bar:
            task = bar.add_task("W4 history pages", total=REPEATS)
            for _ in range(REPEATS):
                p, m, descending = await page_through(
                    session, target.url, reader_token, info["peer"], latency
                )
                pages += p
                messages += m
                ordered = ordered and descending
                bar.advance(task)
        meter.stop()
    return {
        "workload": "W4",
        "store_messages": info["messages"],
        "pages": pages,
        "msgs": messages,
        "conversation_messages": conversation,
        "full_pages": messages == pages * PAGE,
        "newest_first": ordered,
        "latency_ms": latency.summary_ms(),
        **meter.figures(messages),
    }


async def run(settings: Settings, target: Target | None) -> Result:
    """With `target` None the bench builds (or reuses) the store and starts its own server."""
    if target is not None:
        async with aiohttp.ClientSession() as session:
            info = await fill_conversation(target.url, session)
            token = await login(session, target.url, info["reader"])
        return await measure(target, info, token, settings)
    total = settings.w4_messages or (200_000 if settings.quick else 10_000_000)
    data_dir = settings.data_root / f"w4-{total}"
    info = await build(data_dir, total)
    server = ServerProcess(data_dir, settings.out_dir / "server-w4.log")
    await server.start(wait_s=300)
    try:
        async with aiohttp.ClientSession() as session:
            token = await login(session, server.url, info["reader"])
        result = await measure(Target(server.url, server.pid), info, token, settings)
    finally:
        await asyncio.to_thread(server.stop)
    result["build_s"] = info.get("build_s")
    result["compact_s"] = info.get("settled_s")
    return result
