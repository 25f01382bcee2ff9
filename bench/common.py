"""Shared pieces: run settings, the server target, latency histograms and CPU accounting."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

Result = dict[str, Any]

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY_SIZE = 100
PASSWORD = "bench-password-1"

console = Console(stderr=True)


@dataclass
class Settings:
    """What the command line asked for, as the workloads see it."""

    quick: bool
    out_dir: Path
    data_root: Path
    w5_rate: float | None = None
    w1_drivers: int = 2
    w3_connections: int | None = None
    w3_per_process: int = 4000
    w4_messages: int | None = None
    w3c_connections: int | None = None
    w3c_nodes: int = 6
    r1_clients: int | None = None
    r1_backoff: str = "full"
    owns_server: bool = True
    measured: dict[str, float] = field(default_factory=dict)


@dataclass
class Target:
    """The server under test: its base URL and, when known, its PID for /proc readings.
    `peer_pids` are further server processes (other cluster nodes) whose CPU counts too."""

    url: str
    pid: int | None = None
    peer_pids: tuple[int, ...] = ()

    def cpu_seconds(self) -> float | None:
        if self.pid is None:
            return None
        return sum(proc_cpu_seconds(p) for p in (self.pid, *self.peer_pids))

    def rss_kib(self) -> int | None:
        return None if self.pid is None else proc_rss_kib(self.pid)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class CpuMeter:
    """Server and driver CPU over one measured phase."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.server_start: float | None = None
        self.server_end: float | None = None
        self.driver_start = 0.0
        self.driver_end = 0.0

    def start(self) -> None:
        self.server_start = self.target.cpu_seconds()
        self.driver_start = time.process_time()

    def stop(self) -> None:
        self.server_end = self.target.cpu_seconds()
        self.driver_end = time.process_time()

    @property
    def server_cpu(self) -> float | None:
        if self.server_start is None or self.server_end is None:
            return None
        return self.server_end - self.server_start

    @property
    def driver_cpu(self) -> float:
        return self.driver_end - self.driver_start

    def figures(self, msgs: int, extra_driver_cpu: float = 0.0) -> Result:
        server = self.server_cpu
        return {
            "server_cpu_s": rnd(server),
            "server_cpu_s_per_100k": rnd(per_100k(server, msgs)),
            "driver_cpu_s": rnd(self.driver_cpu + extra_driver_cpu),
        }


def per_100k(cpu: float | None, msgs: int) -> float | None:
    if cpu is None or msgs <= 0:
        return None
    return cpu * 100_000 / msgs


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class Latency:
    """An HdrHistogram of latencies in microseconds (1 us .. 10 min, 3 significant digits)."""

    HIGHEST_US = 600_000_000

    def __init__(self) -> None:
        self.hist = HdrHistogram(1, self.HIGHEST_US, 3)

    def record_ns(self, ns: int) -> None:
        us = max(1, min(ns // 1000, self.HIGHEST_US))
        self.hist.record_value(us)

    def encode(self) -> bytes:
        encoded: bytes = self.hist.encode()
        return encoded

    def add_encoded(self, encoded: bytes) -> None:
        self.hist.decode_and_add(encoded)

    @property
    def count(self) -> int:
        return int(self.hist.get_total_count())

    def summary_ms(self) -> Result:
        if self.count == 0:
            return {"p50": None, "p99": None, "max": None}
        return {
            "p50": round(self.hist.get_value_at_percentile(50) / 1000, 3),
            "p99": round(self.hist.get_value_at_percentile(99) / 1000, 3),
            "max": round(self.hist.get_max_value() / 1000, 3),
        }


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
