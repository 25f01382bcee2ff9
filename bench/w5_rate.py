"""W5: fixed-rate latency. 100 pairs at a fixed total rate, sends paced by absolute time and
latency measured from the intended send time: 1,000 msg/s, then half of W1's maximum."""

from __future__ import annotations

from bench.accounts import fresh_accounts
from bench.common import Result, Settings, Target
from bench.pairs_run import make_pairs, run_pairs_workload

PAIRS = 100


def rates(settings: Settings) -> list[float]:
    chosen = [1000.0]
    w1 = settings.measured.get("w1_msg_per_s")
    if w1:
        chosen.append(round(w1 / 2, 1))
    elif settings.w5_rate:
        chosen.append(settings.w5_rate)
    return chosen


async def run(settings: Settings, target: Target) -> Result:
    duration = 5.0 if settings.quick else 20.0
    phases = []
    for rate in rates(settings):
        names, tokens = await fresh_accounts(target.url, "w5", 2 * PAIRS)
        per_sender = rate / PAIRS
        count = max(1, round(per_sender * duration))
        figures = await run_pairs_workload(
            target,
            make_pairs(names, tokens),
            label=f"W5 {rate:.0f} msg/s",
            count=count,
            drivers=settings.w1_drivers,
            budget_s=duration + 120,
            rate_per_sender=per_sender,
        )
        phases.append({"target_msg_per_s": rate, "duration_s": duration, **figures})
    last = phases[-1]
    return {
        "workload": "W5",
        "pairs": PAIRS,
        "msgs": sum(int(p["msgs"]) for p in phases),
        "latency_ms": last["latency_ms"],
        "lost": sum(int(p["lost"]) for p in phases),
        "duplicated": sum(int(p["duplicated"]) for p in phases),
        "reordered": sum(int(p["reordered"]) for p in phases),
        "server_cpu_s_per_100k": last["server_cpu_s_per_100k"],
        "driver_cpu_s": round(sum(float(p["driver_cpu_s"]) for p in phases), 3),
        "phases": phases,
    }
