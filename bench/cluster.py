"""A local Courier cluster for the cluster workloads (`courier.cluster.local`): NATS, PostgreSQL
servers, Redis and N nodes with the bench's limits, started in a fresh temporary folder and
stopped with `down()` at the end, also on errors and Ctrl-C. The engines' and nodes' logs are
copied to the results folder before the temporary folder goes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import Target, console
from bench.server import BENCH_ENV, raise_fd_limit
from courier.cluster import local


@dataclass(frozen=True)
class Cluster:
    """The nodes of a running local cluster, in order: base URLs and PIDs."""

    urls: list[str]
    pids: list[int]

    def target(self) -> Target:
        """The first node as the target; every node's CPU counts."""
        return Target(self.urls[0], self.pids[0], peer_pids=tuple(self.pids[1:]))


@contextlib.contextmanager
def bench_env() -> Iterator[None]:
    """The bench's limits in os.environ, which `up()` hands to every node it starts."""
    saved = {name: os.environ.get(name) for name in BENCH_ENV}
    os.environ.update(BENCH_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Let a stop in progress finish even when Ctrl-C is pressed again."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def keep_logs(workdir: Path, log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    for log in sorted(workdir.glob("*.log")):
        with contextlib.suppress(OSError):
            shutil.copyfile(log, log_dir / log.name)


@contextlib.contextmanager
def local_cluster(nodes: int, log_dir: Path, postgres: int = 2) -> Iterator[Cluster]:
    """Start a cluster of `nodes` nodes; stop exactly its processes when the block ends.

    `up()` runs in this thread: a first Ctrl-C (which asyncio turns into a cancellation)
    takes effect after it has returned, so `down()` below always sees what was started.
    """
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="courier-bench-cluster-") as tmp:
        workdir = Path(tmp)
        try:
            t0 = time.monotonic()
            with bench_env():
                info = local.up(workdir, nodes, postgres=postgres)
            pids = [int(info["pids"][f"node{i}"]) for i in range(nodes)]
            console.log(
                f"cluster up in {time.monotonic() - t0:.1f} s: {nodes} nodes, "
                f"{postgres} PostgreSQL, NATS, Redis"
            )
            yield Cluster(list(info["nodes"]), pids)
        finally:
            with sigint_ignored():
                stopped = local.down(workdir)
                keep_logs(workdir, log_dir)
            console.log(f"cluster stopped: {', '.join(stopped) or 'nothing was running'}")
