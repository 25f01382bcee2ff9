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

from bench import s1_store, w1_pairs, w2_drain, w3_idle, w4_history, w5_rate
from bench.common import Result, Settings, Target, console
from bench.report import emit, median_of, write_summary
from bench.server import ServerProcess, raise_fd_limit

ORDER = ["W1", "W2", "W3", "W5", "S1", "W4"]
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, a few minutes in all")
    p.add_argument("--url", help="test a running server instead of starting one")
    p.add_argument(
        "--server-pid", type=int, help="PID of the --url server, for its CPU and RSS figures"
    )
    p.add_argument(
        "--workloads", default=",".join(ORDER), help="comma-separated, of " + ",".join(ORDER)
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    p.add_argument("--data-root", type=Path, default=Path("bench-data"), help="W4's stores")
    p.add_argument("--repeat", type=int, default=1, help="run each workload K times; medians")
    p.add_argument("--w5-rate", type=float, help="W5's second rate when W1 is not run")
    p.add_argument("--drivers", type=int, default=2, help="driver processes for W1 and W5")
    p.add_argument("--w3-connections", type=int, help="idle connections (19000; quick 2000)")
    p.add_argument("--w3-per-process", type=int, default=4000, help="connections per driver")
    p.add_argument("--w4-messages", type=int, help="W4 store size (10M; quick 200K)")
    args = p.parse_args(argv)
    if args.url and not is_loopback(args.url):
        p.error("--url must name a loopback address (127.0.0.0/8, ::1 or localhost)")
    unknown = set(args.workloads.split(",")) - set(ORDER)
    if unknown:
        p.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be 1..20")
    return args


async def run_once(name: str, settings: Settings, url: str | None, pid: int | None) -> Result:
    if name == "S1":
        return await s1_store.run(settings)
    if name == "W4":
        return await w4_history.run(settings, Target(url, pid) if url else None)
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
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
