"""W3C: idle connections across a local cluster (6 nodes by default). The connections are
spread evenly over the nodes; every node gets its own driver processes, each under the
open-files limit and on its own loopback source address. Figures: connect time, every node's
RSS (VmRSS) before and after, RSS per connection per node and their mean, and how many
connections still answer `ping` after the hold."""

from __future__ import annotations

import asyncio
import math
import statistics

from bench.accounts import fresh_accounts
from bench.cluster import local_cluster
from bench.common import CpuMeter, Result, Settings, proc_rss_kib, rnd
from bench.drivers import run_workers
from bench.w3_idle import IdleJob, connect_figures, idle_worker, source_ip

USERS = 200
IN_FLIGHT_PER_NODE = 100


async def run(settings: Settings) -> Result:
    n = settings.w3c_connections or (6000 if settings.quick else 100_000)
    nodes = settings.w3c_nodes
    per_proc = settings.w3_per_process
    connect_budget_s = 120.0 if settings.quick else 480.0
    hold_s = 3.0 if settings.quick else 10.0
    with local_cluster(nodes, settings.out_dir / "cluster-W3C") as cluster:
        users = min(USERS, n)
        names, tokens = await fresh_accounts(cluster.urls[0], "w3c", users)
        conn_tokens = [tokens[names[i % users]] for i in range(n)]
        jobs: list[IdleJob] = []
        node_of_job: list[int] = []
        for k, url in enumerate(cluster.urls):
            share = conn_tokens[k::nodes]
            procs = max(1, math.ceil(len(share) / per_proc))
            for j in range(procs):
                jobs.append(
                    IdleJob(
                        url,
                        source_ip(len(jobs)),
                        share[j::procs],
                        budget_s=connect_budget_s,
                        concurrency=max(1, IN_FLIGHT_PER_NODE // procs),
                    )
                )
                node_of_job.append(k)
        meter = CpuMeter(cluster.target())
        rss_before: list[int] = []
        rss_after: list[int] = []
        held_info: list[Result] = []

        def before() -> None:
            rss_before.extend(proc_rss_kib(pid) for pid in cluster.pids)
            meter.start()

        async def measure(held: list[Result]) -> None:
            await asyncio.sleep(hold_s)
            rss_after.extend(proc_rss_kib(pid) for pid in cluster.pids)
            held_info.extend(held)

        _, done = await run_workers(
            idle_worker,
            jobs,
            label="W3C connections",
            total=n,
            budget_s=connect_budget_s + 300,
            on_go=before,
            on_held=measure,
        )
        meter.stop()
    conn = connect_figures(held_info, done)
    per_node: list[Result] = []
    for k in range(nodes):
        mine = [i for i, node in enumerate(node_of_job) if node == k]
        connected = sum(int(held_info[i]["connected"]) for i in mine)
        grown = rss_after[k] - rss_before[k]
        per_node.append(
            {
                "node": f"node{k}",
                "connected": connected,
                "alive_after_hold": sum(int(done[i]["alive"]) for i in mine),
                "dead_after_hold": {
                    k: sum(int(done[i]["dead"][k]) for i in mine)
                    for k in ("closed", "timeout", "error")
                },
                "late_pongs": sum(int(done[i]["late_pongs"]) for i in mine),
                "driver_procs": len(mine),
                "rss_before_kib": rss_before[k],
                "rss_after_kib": rss_after[k],
                "rss_kib_per_conn": rnd(grown / connected, 2) if connected else None,
            }
        )
    per_conn = [float(p["rss_kib_per_conn"]) for p in per_node if p["rss_kib_per_conn"]]
    worker_cpu = sum(float(d["process_cpu_s"]) for d in done)
    figures = meter.figures(0, worker_cpu)
    return {
        "workload": "W3C",
        "nodes": nodes,
        "connections": n,
        "connected": conn["connected"],
        "failed": conn["failed"],
        "alive_after_hold": conn["alive_after_hold"],
        "dead_after_hold": conn["dead_after_hold"],
        "late_pongs": conn["late_pongs"],
        "users": users,
        "driver_procs": len(jobs),
        "max_conns_per_driver": max(len(j.tokens) for j in jobs),
        "connect_s": conn["connect_s"],
        "connect_ms_per_conn": conn["connect_ms_per_conn"],
        "connect_latency_ms": conn["connect_latency_ms"],
        "server_rss_kib_per_conn_mean": rnd(statistics.mean(per_conn), 2) if per_conn else None,
        "server_rss_total_growth_kib": sum(rss_after) - sum(rss_before),
        "per_node": per_node,
        "server_cpu_s": figures["server_cpu_s"],
        "server_cpu_s_per_100k": None,
        "driver_cpu_s": figures["driver_cpu_s"],
        "failure_sample": conn["failure_sample"],
    }
