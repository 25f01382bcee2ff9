"""Accounts for a workload: fresh usernames, registered and logged in with a progress bar."""

from __future__ import annotations

from bench.client import make_accounts, run_prefix, usernames
from bench.common import progress


async def fresh_accounts(url: str, tag: str, count: int) -> tuple[list[str], dict[str, str]]:
    names = usernames(run_prefix(tag), count)
    with progress() as bar:
        task = bar.add_task(f"{tag}: accounts", total=count)
        tokens = await make_accounts(url, names, on_done=lambda: bar.advance(task))
    return names, tokens
