"""A whole local cluster (`courier cluster up`): NATS, two PostgreSQL servers, Redis and three
nodes, shared by the tests of this package and stopped by PID at the end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from courier.cluster.engines import EngineError, Proc
from courier.cluster.local import STATE, down, up


class Cluster:
    def __init__(self, workdir: Path, info: dict[str, Any]) -> None:
        self.dir = workdir
        self.info = info

    @property
    def nodes(self) -> list[str]:
        nodes: list[str] = self.info["nodes"]
        return nodes

    @property
    def metrics(self) -> list[str]:
        """Each node's metrics listener, in the order of `nodes`."""
        metrics: list[str] = self.info["metrics"]
        return metrics

    def pid(self, name: str) -> int:
        pid: int = self.info["pids"][name]
        return pid

    def processes(self) -> list[dict[str, Any]]:
        state: list[dict[str, Any]] = json.loads((self.dir / STATE).read_text())["processes"]
        return state

    def replace(self, proc: Proc) -> None:
        """Record a restarted process, so that `down` stops the new one."""
        state = json.loads((self.dir / STATE).read_text())
        state["processes"] = [p for p in state["processes"] if p["name"] != proc.name]
        state["processes"].append(asdict(proc))
        (self.dir / STATE).write_text(json.dumps(state))
        self.info["pids"][proc.name] = proc.pid


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    try:
        info = up(workdir, nodes=3)
    except EngineError as exc:
        pytest.skip(f"the local cluster cannot start here: {exc}")
    try:
        yield Cluster(workdir, info)
    finally:
        down(workdir)
