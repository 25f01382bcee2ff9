"""`courier cluster up` / `courier cluster down`: a whole cluster on one machine.

`up` starts NATS, PostgreSQL servers, Redis and N nodes on free loopback ports, waits until
every node answers /healthz, records every PID in DIR/cluster.json and returns the URLs.
`down` stops exactly those processes, by PID, nodes first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from courier.cluster.engines import (
    EngineError,
    Proc,
    remove_postgres_data,
    start_nats,
    start_node,
    start_postgres,
    start_redis,
)

STATE = "cluster.json"


def up(workdir: Path, nodes: int, postgres: int = 2, timeout: float = 90) -> dict[str, Any]:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / STATE).exists():
        raise EngineError(f"a cluster is already recorded in {workdir / STATE}; run down first")
    started: list[Proc] = []
    try:
        started.append(start_nats(workdir))
        for i in range(postgres):
            started.append(start_postgres(workdir, f"pg{i}"))
        started.append(start_redis(workdir))
        env = {
            "COURIER_STORE": "postgres",
            "COURIER_POSTGRES_SERVERS": ",".join(p.url for p in started if p.name.startswith("pg")),
            "COURIER_BROKER": "nats",
            "COURIER_NATS_URL": started[0].url,
            "COURIER_CACHE": "redis",
            "COURIER_REDIS_URL": started[-1].url,
            # A local cluster sits behind a balancer on this machine (deploy/nginx.conf):
            # loopback is the proxy, whose X-Forwarded-For names the client.
            "COURIER_TRUSTED_PROXIES": "127.0.0.1",
        }
        node_procs = [start_node(workdir, f"node{i}", env) for i in range(nodes)]
        started.extend(node_procs)
        _save(workdir, started)
        for node in node_procs:
            _wait_healthy(node, workdir, timeout)
    except BaseException:
        stop_procs(started)
        (workdir / STATE).unlink(missing_ok=True)
        raise
    return describe(started)


def describe(procs: list[Proc]) -> dict[str, Any]:
    by = {p.name: p for p in procs}
    return {
        "nodes": [p.url for p in procs if p.name.startswith("node")],
        "metrics": [p.metrics for p in procs if p.name.startswith("node")],
        "nats": by["nats"].url,
        "postgres": [p.url for p in procs if p.name.startswith("pg")],
        "redis": by["redis"].url,
        "pids": {p.name: p.pid for p in procs},
    }


def down(workdir: Path) -> list[str]:
    """Stop what `up` started in `workdir`; return the names stopped."""
    state = workdir / STATE
    if not state.exists():
        return []
    procs = [Proc(**p) for p in json.loads(state.read_text())["processes"]]
    stop_procs(procs)
    state.unlink()
    remove_postgres_data(workdir)
    return [p.name for p in procs]


def _save(workdir: Path, procs: list[Proc]) -> None:
    payload = {"processes": [asdict(p) for p in procs], **describe(procs)}
    (workdir / STATE).write_text(json.dumps(payload, indent=2))


def _wait_healthy(node: Proc, workdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.alive():
            log = (workdir / f"{node.name}.log").read_text(errors="replace")[-1500:]
            raise EngineError(f"{node.name} exited:\n{log}")
        try:
            with urllib.request.urlopen(node.url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise EngineError(f"{node.name} did not become healthy in {timeout:.0f} s")


def stop_procs(procs: list[Proc]) -> None:
    """Nodes first (they flush to the engines), then the engines; SIGKILL what lingers."""
    order = sorted(procs, key=lambda p: not p.name.startswith("node"))
    for group in (
        [p for p in order if p.name.startswith("node")],
        [p for p in order if not p.name.startswith("node")],
    ):
        for p in group:
            if p.alive():
                os.kill(p.pid, signal.SIGINT if p.name.startswith("pg") else signal.SIGTERM)
        deadline = time.monotonic() + 20
        while any(p.alive() for p in group) and time.monotonic() < deadline:
            _reap(group)
            time.sleep(0.05)
        for p in group:
            if p.alive():
                os.kill(p.pid, signal.SIGKILL)
        _reap(group)


def _reap(procs: list[Proc]) -> None:
    """Collect these processes if they are our children (`up` and `down` in one process);
    an exited child would otherwise look alive until reaped."""
    for p in procs:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(p.pid, os.WNOHANG)
