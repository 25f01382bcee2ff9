"""Run a set of pairs over several driver processes and turn the tallies into figures."""

from __future__ import annotations

from bench import metrics as server_metrics
from bench.common import CpuMeter, Result, Target, rnd
from bench.drivers import run_workers
from bench.pairs import Pair, PairsJob, merge, pairs_worker


def make_pairs(names: list[str], tokens: dict[str, str]) -> list[Pair]:
    return [
        Pair(names[2 * i], tokens[names[2 * i]], names[2 * i + 1], tokens[names[2 * i + 1]])
        for i in range(len(names) // 2)
    ]


def split(pairs: list[Pair], parts: int) -> list[list[Pair]]:
    parts = max(1, min(parts, len(pairs)))
    return [pairs[i::parts] for i in range(parts)]


async def run_pairs_workload(
    target: Target,
    pairs: list[Pair],
    *,
    label: str,
    count: int,
    drivers: int,
    budget_s: float,
    rate_per_sender: float | None = None,
    metric_urls: list[str] | None = None,
) -> Result:
    """Returns figures common to W1 and W5: msgs, seconds, msg_per_s, latency, lost...
    With `metric_urls` (several servers) `server_metrics` holds one reading per URL."""
    chunks = split(pairs, drivers)
    jobs = []
    index = 0
    for chunk in chunks:
        jobs.append(
            PairsJob(
                url=target.url,
                pairs=chunk,
                count=count,
                budget_s=budget_s,
                rate_per_sender=rate_per_sender,
                stagger_index=index,
                total_pairs=len(pairs),
            )
        )
        index += len(chunk)
    meter = CpuMeter(target)
    urls = metric_urls or [target.url]
    metrics_before = [await server_metrics.read(u) for u in urls]
    _, results = await run_workers(
        pairs_worker,
        jobs,
        label=label,
        total=count * len(pairs),
        budget_s=budget_s + 180,
        on_go=meter.start,
    )
    meter.stop()
    metrics_after = [await server_metrics.read(u) for u in urls]
    readings = [
        server_metrics.between(b, a) for b, a in zip(metrics_before, metrics_after, strict=True)
    ]
    store_figures: Result | list[Result | None] | None = readings if metric_urls else readings[0]
    total, latency = merge(results)
    seconds = total["seconds"]
    delivered = int(total["delivered"])
    worker_cpu = [float(c) for c in total["worker_cpu_s"]]
    out: Result = {
        "msgs": delivered,
        "seconds": rnd(seconds),
        "msg_per_s": rnd(delivered / seconds, 1) if seconds else None,
        "latency_ms": latency.summary_ms(),
        "lost": total["lost"],
        "duplicated": total["duplicated"],
        "reordered": total["reordered"],
        "send_errors": total["send_errors"],
        "disconnects": total["disconnects"],
        **meter.figures(delivered, sum(worker_cpu)),
        "driver_procs": len(jobs),
        "driver_proc_cpu_util": [rnd(c / seconds, 2) if seconds else None for c in worker_cpu],
        "server_metrics": store_figures,
    }
    if total["timed_out"]:
        out["timed_out"] = True
    if total["error_sample"]:
        out["error_sample"] = total["error_sample"]
    if total["task_errors"]:
        out["task_errors"] = total["task_errors"]
    return out
