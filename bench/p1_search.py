"""P1: people search (`GET /v1/users?q=`) on 100,000 users (quick: 10,000), in the store
alone, on each store: RocksDB, and two PostgreSQL servers started for the run.

Every user has a display name of a first and a last name (from 60 x 60 of each); queries are
prefixes of 1 to 5 characters of a first name, a last name or a username, chosen at random
with a fixed seed, answered with the API's default limit of 10. Reports the latency of a
search (p50 / p99 / max), searches per second one at a time, and how fast the index was
built.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Latency, Result, Settings, console, rnd
from bench.s1_postgres import postgres_servers
from courier.adapters.rocks_store import RocksStore
from courier.domain.ops import CreateUser, SetProfile
from courier.domain.profiles import SEARCH_LIMIT_DEFAULT, query_term
from courier.ports import Store


def _words(text: str) -> list[str]:
    return text.split()


FIRST = _words(
    """
anna ben carla david emma felix greta hugo ida jonas karla leon mia noah olga paul quinn
rosa sam tara uwe vera will xena yara zoe adam bea cem dora elif finn gul hans ines jan
kim lena max nina otto pia rafa sara tom ulla vito wanda yusuf zara amir bruno chloe
dana erik fatma gino hana ivan
"""
)
LAST = _words(
    """
meyer schmidt novak rossi garcia silva kowalski nagy popescu jensen smith brown dubois
leroy moreau lopez martin bernard petit durand richard weber fischer wagner becker
hoffmann koch bauer wolf klein neumann schwarz braun zimmermann kruger hartmann lange
werner krause lehmann walter maier mayer huber kaiser fuchs peters lang scholz moller
weiss jung hahn vogel friedrich keller gunther frank berger
"""
)
QUERIES = 2000
CHUNK = 500


def people(count: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        out.append((f"{first}.{last}{i}", f"{first.title()} {last.title()}"))
    return out


def queries(users: list[tuple[str, str]], rng: random.Random) -> list[str]:
    out = []
    for _ in range(QUERIES):
        username, name = rng.choice(users)
        source = rng.choice([username, *name.split()])
        out.append(source[: rng.randint(1, 5)])
    return out


async def fill(store: Store, users: list[tuple[str, str]]) -> float:
    started = time.perf_counter()
    for i in range(0, len(users), CHUNK):
        part = users[i : i + CHUNK]
        await asyncio.gather(*(store.submit(CreateUser(u, "x", 1)) for u, _ in part))
        await asyncio.gather(*(store.submit(SetProfile(u, n)) for u, n in part))
    return time.perf_counter() - started


async def measure(store: Store, users: list[tuple[str, str]], rng: random.Random) -> Result:
    seconds = await fill(store, users)
    lat = Latency()
    found = 0
    started = time.perf_counter()
    for q in queries(users, rng):
        t0 = time.perf_counter_ns()
        answer = await store.search_users(query_term(q), SEARCH_LIMIT_DEFAULT)
        lat.record_ns(time.perf_counter_ns() - t0)
        found += len(answer)
    took = time.perf_counter() - started
    return {
        "users_per_s_indexed": rnd(len(users) / seconds, 1),
        "searches": QUERIES,
        "searches_per_s": rnd(QUERIES / took, 1),
        "latency_ms": lat.summary_ms(),
        "mean_results": rnd(found / QUERIES, 2),
    }


async def run(settings: Settings) -> Result:
    count = 10_000 if settings.quick else 100_000
    users = people(count, random.Random(11))
    stores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="courier-p1-") as tmp:
        rocks = RocksStore(str(Path(tmp) / "store"))
        await rocks.open()
        try:
            console.log(f"P1: {count} users on RocksDB")
            stores["rocks"] = await measure(rocks, users, random.Random(5))
        finally:
            await rocks.close()
    from courier.adapters.pg_store import PgStore

    async with postgres_servers("courier-p1-") as dsns:
        pg = PgStore(dsns)
        await pg.open()
        try:
            console.log(f"P1: {count} users on two PostgreSQL servers")
            stores["postgres"] = await measure(pg, users, random.Random(5))
        finally:
            await pg.close()
    return {
        "workload": "P1",
        "users": count,
        "stores": stores,
        "p99_ms_rocks": stores["rocks"]["latency_ms"]["p99"],
        "p99_ms_postgres": stores["postgres"]["latency_ms"]["p99"],
    }
