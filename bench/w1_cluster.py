"""W1C: W1 against a local cluster of 2 nodes. Half the pairs send on node0 and receive on
node1, the other half the other way round, so every message crosses NATS and both nodes carry
the same load. Server CPU is the sum over both node processes."""

from __future__ import annotations

from dataclasses import replace

from bench.accounts import fresh_accounts
from bench.cluster import local_cluster
from bench.common import Result, Settings
from bench.pairs_run import make_pairs, run_pairs_workload

NODES = 2


async def run(settings: Settings) -> Result:
    npairs, count = (20, 200) if settings.quick else (100, 500)
    with local_cluster(NODES, settings.out_dir / "cluster-W1C") as cluster:
        a, b = cluster.urls
        names, tokens = await fresh_accounts(a, "w1c", 2 * npairs)
        pairs = [
            replace(p, sender_url=a, receiver_url=b)
            if i % 2 == 0
            else replace(p, sender_url=b, receiver_url=a)
            for i, p in enumerate(make_pairs(names, tokens))
        ]
        figures = await run_pairs_workload(
            cluster.target(),
            pairs,
            label="W1C messages",
            count=count,
            drivers=settings.w1_drivers,
            budget_s=300,
            metric_urls=cluster.urls,
        )
    return {
        "workload": "W1C",
        "nodes": NODES,
        "adapters": "postgres x2, nats, redis",
        "pairs": npairs,
        "per_sender": count,
        "window": 10,
        **figures,
    }
