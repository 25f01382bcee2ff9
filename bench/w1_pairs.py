"""W1: pairs throughput. Senders keep at most 10 sends unacknowledged; figures are the
delivered rate, send-to-receive latency and lost/duplicated/reordered counts."""

from __future__ import annotations

from bench.accounts import fresh_accounts
from bench.common import Result, Settings, Target
from bench.pairs_run import make_pairs, run_pairs_workload


async def run(settings: Settings, target: Target) -> Result:
    npairs, count = (20, 200) if settings.quick else (100, 500)
    names, tokens = await fresh_accounts(target.url, "w1", 2 * npairs)
    figures = await run_pairs_workload(
        target,
        make_pairs(names, tokens),
        label="W1 messages",
        count=count,
        drivers=settings.w1_drivers,
        budget_s=300,
    )
    if figures["msg_per_s"]:
        settings.measured["w1_msg_per_s"] = float(figures["msg_per_s"])
    return {"workload": "W1", "pairs": npairs, "per_sender": count, "window": 10, **figures}
