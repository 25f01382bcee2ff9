"""`python -m bench`: run the workloads, print one JSON line each, write a Markdown summary."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

from bench import (
    p1_search,
    p2_presence,
    r1_storm,
    s1_groups,
    s1_postgres,
    s1_store,
    w1_cluster,
    w1_pairs,
    w2_drain,
    w3_cluster,
    w3_idle,
    w4_history,
    w5_rate,
    w6_fanout,
)
from bench.common import Result, Settings, Target, console
from bench.report import emit, median_of, write_summary
from bench.server import ServerProcess, raise_fd_limit

ORDER = [
    "W1",
    "W1C",
    "W2",
    "W3",
    "W3C",
    "W5",
    "W6",
    "W6C",
    "R1",
    "S1",
    "S1P",
    "S1G",
    "P1",
    "P2",
    "W4",
]
OWN_SERVER = {"R1", "W6"}  # kills and restarts the server it runs against: never with --url
CLUSTER_RUNS: dict[str, Callable[[Settings], Awaitable[Result]]] = {
    "W1C": w1_cluster.run,
    "W3C": w3_cluster.run,
    "W6C": w6_fanout.run_cluster,
}
SOCKET_RUNS: dict[str, Callable[[Settings, Target], Awaitable[Result]]] = {
    "W1": w1_pairs.run,
    "W2": w2_drain.run,
    "W3": w3_idle.run,
    "W5": w5_rate.run,
}


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_workloads(quick: bool, url: str | None) -> list[str]:
    """Everything, except W3C in a --quick run, and the cluster workloads and R1 with --url."""
    names = [w for w in ORDER if not (quick and w == "W3C")]
    return [w for w in names if not (url and (w in CLUSTER_RUNS or w in OWN_SERVER))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, a few minutes in all")
    p.add_argument("--url", help="test a running server instead of starting one")
    p.add_argument(
        "--server-pid", type=int, help="PID of the --url server, for its CPU and RSS figures"
    )
    p.add_argument(
        "--workloads",
        help="comma-separated, of " + ",".join(ORDER) + " (default: all; W3C not with --quick,"
        " W1C, W3C and R1 not with --url)",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    p.add_argument("--data-root", type=Path, default=Path("bench-data"), help="W4's stores")
    p.add_argument("--repeat", type=int, default=1, help="run each workload K times; medians")
    p.add_argument("--w5-rate", type=float, help="W5's second rate when W1 is not run")
    p.add_argument("--drivers", type=int, default=2, help="driver processes for W1 and W5")
    p.add_argument("--w3-connections", type=int, help="idle connections (19000; quick 2000)")
    p.add_argument("--w3-per-process", type=int, default=4000, help="connections per driver")
    p.add_argument("--w4-messages", type=int, help="W4 store size (10M; quick 200K)")
    p.add_argument("--w3c-connections", type=int, help="W3C idle connections (100000; quick 6000)")
    p.add_argument("--w3c-nodes", type=int, default=6, help="W3C cluster nodes")
    p.add_argument("--r1-clients", type=int, help="R1 reconnecting clients (10000; quick 1000)")
    p.add_argument(
        "--r1-backoff",
        choices=r1_storm.SCHEDULES,
        default="full",
        help="R1's reconnect schedule: the SDK's full jitter, or for comparison equal or none",
    )
    args = p.parse_args(argv)
    if args.url and not is_loopback(args.url):
        p.error("--url must name a loopback address (127.0.0.0/8, ::1 or localhost)")
    if args.workloads is None:
        args.workloads = ",".join(default_workloads(args.quick, args.url))
    unknown = set(args.workloads.split(",")) - set(ORDER)
    if unknown:
        p.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.url and OWN_SERVER & set(args.workloads.split(",")):
        p.error("R1 kills and restarts its own server: it cannot run with --url")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be 1..20")
    if args.w3c_nodes < 1:
        p.error("--w3c-nodes must be at least 1")
    return args


async def run_once(name: str, settings: Settings, url: str | None, pid: int | None) -> Result:
    if name == "S1":
        return await s1_store.run(settings)
    if name == "S1P":
        return await s1_postgres.run(settings)
    if name == "S1G":
        return await s1_groups.run(settings)
    if name == "P1":
        return await p1_search.run(settings)
    if name == "P2":
        return await p2_presence.run(settings)
    if name == "W4":
        return await w4_history.run(settings, Target(url, pid) if url else None)
    if name == "R1":
        return await r1_storm.run(settings)
    if name == "W6":
        return await w6_fanout.run(settings)
    if name in CLUSTER_RUNS:
        return await CLUSTER_RUNS[name](settings)
    run = SOCKET_RUNS[name]
    if url:
        return await run(settings, Target(url, pid))
    with tempfile.TemporaryDirectory(prefix="courier-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data", settings.out_dir / f"server-{name}.log")
        await server.start()
        try:
            return await run(settings, Target(server.url, server.pid))
        finally:
            code = await asyncio.to_thread(server.stop)
            console.log(f"{name}: server stopped (exit {code})")


async def main_async(args: argparse.Namespace) -> int:
    out: Path = args.out
    settings = Settings(
        quick=args.quick,
        out_dir=out,
        data_root=args.data_root,
        w5_rate=args.w5_rate,
        w1_drivers=args.drivers,
        w3_connections=args.w3_connections,
        w3_per_process=args.w3_per_process,
        w4_messages=args.w4_messages,
        w3c_connections=args.w3c_connections,
        w3c_nodes=args.w3c_nodes,
        r1_clients=args.r1_clients,
        r1_backoff=args.r1_backoff,
        owns_server=args.url is None,
    )
    wanted = set(args.workloads.split(","))
    jsonl = out / "results.jsonl"
    runs_log = out / "runs.jsonl"
    results: list[Result] = []
    failed = False
    for name in [w for w in ORDER if w in wanted]:
        runs: list[Result] = []
        for k in range(args.repeat):
            console.rule(f"{name} run {k + 1}/{args.repeat}")
            try:
                result = await run_once(name, settings, args.url, args.server_pid)
            except Exception as exc:
                console.print(traceback.format_exc())
                result = {"workload": name, "error": f"{type(exc).__name__}: {exc}"}
                failed = True
            result["quick"] = args.quick
            runs.append(result)
            with runs_log.open("a") as f:
                f.write(json.dumps(result) + "\n")
        good = [r for r in runs if "error" not in r] or runs
        final: Result = median_of(good) if len(good) > 1 else good[0]
        if len(runs) > 1:
            final["repeat"] = len(runs)
            final["failed_runs"] = len(runs) - len(good)
        if name == "W1" and final.get("msg_per_s"):
            settings.measured["w1_msg_per_s"] = float(final["msg_per_s"])
        emit(final, jsonl)
        results.append(final)
    meta = {"quick": args.quick, "repeat": args.repeat, "server": args.url or "own (courier serve)"}
    write_summary(results, out / "summary.md", meta)
    console.print(f"summary: {out / 'summary.md'}")
    return 1 if failed else 0


def main() -> int:
    args = parse_args()
    raise_fd_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main_async(args))
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
