"""The server's own view, from GET /metrics: group-commit batch sizes and commit times."""

from __future__ import annotations

import aiohttp

from bench.common import Result
from bench.server import BENCH_METRICS_TOKEN

Raw = dict[str, float]


def parse(text: str) -> Raw:
    """The samples of a Prometheus text page, labelled ones under their full name."""
    values: Raw = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def between(before: Raw | None, after: Raw | None) -> Result | None:
    """Means over the interval between two readings."""
    if before is None or after is None:
        return None

    def diff(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean(name: str, scale: float = 1.0) -> float | None:
        count = diff(f"{name}_count")
        return round(diff(f"{name}_sum") / count * scale, 3) if count > 0 else None

    return {
        "store_batches": int(diff("courier_store_batch_size_count")),
        "store_batch_mean": mean("courier_store_batch_size"),
        "store_commit_ms_mean": mean("courier_store_commit_seconds", 1000.0),
        "send_to_push_ms_mean": mean("courier_send_to_push_seconds", 1000.0),
        "ws_upgrades": {
            front: int(diff(f'courier_ws_upgrades_total{{front="{front}"}}'))
            for front in ("lean", "aiohttp")
        },
    }


_AUTH = {"Authorization": f"Bearer {BENCH_METRICS_TOKEN}"}


async def read(url: str) -> Raw | None:
    """None when the server has no /metrics."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{url}/metrics", headers=_AUTH) as resp,
        ):
            if resp.status != 200:
                return None
            return parse(await resp.text())
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
